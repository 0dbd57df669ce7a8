"""fresco_contract/wire.py's typed events: the JSON of each is the feed's {"seq", "type", ...} as it
was, and from_dict reads it back, refusing what does not fit."""
from __future__ import annotations

import dataclasses
import json

import pytest

from fresco_contract import wire
from fresco_contract.progress import Progress

EVENTS = [
    (wire.StateEvent(seq=0, state=wire.QUEUED), '{"seq": 0, "type": "state", "state": "queued"}'),
    (wire.ProgressEvent(seq=1, stage="load model", done=0, total=40, eta=None),
     '{"seq": 1, "type": "progress", "stage": "load model", "done": 0, "total": 40, "eta": null}'),
    (wire.FrameEvent(seq=2, index=7), '{"seq": 2, "type": "frame", "index": 7}'),
    (wire.DoneEvent(seq=3, frame_count=8), '{"seq": 3, "type": "done", "frame_count": 8}'),
    (wire.ErrorEvent(seq=4, message="boom"), '{"seq": 4, "type": "error", "message": "boom"}'),
    (wire.CutsEvent(seq=5, frames=[30, 76]), '{"seq": 5, "type": "cuts", "frames": [30, 76]}'),
]


@pytest.mark.parametrize("event, text", EVENTS, ids=lambda v: type(v).__name__)
def test_each_event_is_the_json_of_the_feed_and_reads_back(event, text):
    assert json.dumps(event.to_dict()) == text
    assert wire.Event.from_dict(json.loads(text)) == event


def test_every_event_type_is_known_by_its_type():
    assert set(wire.EVENT_TYPES) == {wire.EV_STATE, wire.EV_PROGRESS, wire.EV_FRAME, wire.EV_DONE, wire.EV_ERROR,
                                    wire.EV_CUTS}


def test_a_progress_event_is_made_from_a_progress():
    progress = Progress("denoise step 1/20, batch 1/2", 3, 40, eta=12, seconds_per_step=0.5, detail="x")
    event = dataclasses.replace(wire.ProgressEvent.of(progress), seq=5)
    assert event.to_dict() == {"seq": 5, "type": "progress", "stage": "denoise step 1/20, batch 1/2",
                               "done": 3, "total": 40, "eta": 12.0}  # seconds_per_step stays with the server
    assert isinstance(event.eta, float)


def test_an_unnumbered_event_is_not_sent():
    with pytest.raises(ValueError, match="no seq"):
        wire.FrameEvent(index=0).to_dict()


@pytest.mark.parametrize("data, needle", [
    ({"seq": 1, "type": "frame"}, "index: expected int, got None"),
    ({"seq": 1, "type": "frame", "index": True}, "index: expected int"),
    ({"type": "state", "state": "done"}, "seq: expected int"),
    ({"seq": 1, "type": "progress", "stage": "s", "done": 0, "total": 1, "eta": "soon"}, "eta: expected float | None"),
    ({"seq": 1, "type": "error", "message": 5}, "message: expected str"),
])
def test_an_event_of_the_wrong_shape_is_refused_naming_the_field(data, needle):
    with pytest.raises(ValueError, match=needle):
        wire.Event.from_dict(data)


def test_an_unknown_type_is_none_for_the_reader_to_skip():
    assert wire.Event.from_dict({"seq": 1, "type": "newer"}) is None
    assert wire.Event.from_dict(["not", "an", "event"]) is None
    assert wire.Event.from_dict({"seq": 2, "type": "progress", "stage": "s", "done": 0, "total": 1, "eta": 3}).eta == 3.0
