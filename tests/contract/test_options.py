"""The backend's options described once (fresco_contract/options.py): the parsers' flags and the add-on's settings."""
from __future__ import annotations

import argparse

import pytest

from fresco_contract import options, settings


def parser(command: str) -> argparse.ArgumentParser:
    made = argparse.ArgumentParser(exit_on_error=False)
    options.add_arguments(made, command)
    return made


def test_the_server_flags_keep_their_defaults_and_types():
    args = parser(options.SERVER).parse_args([])
    assert (args.host, args.port, args.device, args.log_level, args.ray, args.controlnet) == (
        "127.0.0.1", 0, "auto", "INFO", None, None)
    args = parser(options.SERVER).parse_args(["--port", "8000", "--ray", "--log-level", "debug", "--controlnet", "a",
                                              "--controlnet", "tile=b", "--workers", "2", "--exit-with-stdin"])
    assert (args.port, args.ray, args.log_level, args.controlnet, args.workers, args.exit_with_stdin) == (
        8000, "", "DEBUG", ["a", "tile=b"], 2, True)
    for flags in (["--port", "70000"], ["--workers", "0"], ["--segments", "x"], ["--log-level", "loud"],
                  ["--threads", "0"]):
        with pytest.raises(argparse.ArgumentError):
            parser(options.SERVER).parse_args(flags)


def test_the_translate_flags_are_those_it_shares_with_the_server():
    server = {action.dest for action in parser(options.SERVER)._actions}
    translate = {action.dest for action in parser(options.TRANSLATE)._actions}
    assert translate - {"help"} == {"controlnet", "config", "controlnet_config", "annotators", "ip_adapter_file",
                                    "image_encoder", "device", "threads"}
    assert translate <= server


def test_the_addon_settings_have_one_key_variable_and_preference_each():
    found = options.addon_settings()
    for field in ("key", "env", "pref"):
        assert len({getattr(s, field) for s in found}) == len(found), field
    by_key = {s.key: s for s in found}
    for kind in settings.CONTROL_KINDS:  # one ControlNet and one config per control kind
        key = "controlnet" if kind == "canny" else f"controlnet_{kind}"
        assert by_key[key].kind == by_key[f"{key}_config"].kind == kind
        assert by_key[key].env == f"FRESCO_{key.upper()}" and by_key[f"{key}_config"].env.endswith("_CONFIG")
    assert (by_key["python"].pref, by_key["url"].pref, by_key["model_config"].flag) == (
        "backend_python", "backend_url", "--config")
    assert by_key["annotators"].env == options.ANNOTATORS_ENV == "FRESCO_ANNOTATORS"
    assert by_key["token"].description == "Bearer token of the remote backend; env FRESCO_TOKEN overrides"
    assert [s.key for s in found if not s.backend] == ["output_dir"]
    assert by_key["output_dir"].default == "//fresco/" and by_key["model"].default == ""  # "": the server's


def test_a_setting_gives_its_server_arguments():
    by_key = {s.key: s for s in options.addon_settings()}
    assert by_key["controlnet"].server_args("me/canny") == ["--controlnet", "me/canny"]  # bare: canny's
    assert by_key["controlnet_depth"].server_args("/d net") == ["--controlnet", "depth=/d net"]
    assert by_key["controlnet_tile_config"].server_args("/c") == ["--controlnet-config", "tile=/c"]
    assert by_key["annotators"].server_args("/a") == ["--annotators", "/a"]
    assert by_key["annotators"].server_args("") == [] and by_key["token"].server_args("secret") == []
    assert by_key["ip_adapter_file"].server_args("/s.safetensors") == ["--ip-adapter-file", "/s.safetensors"]
    assert by_key["image_encoder"].server_args("/e") == ["--image-encoder", "/e"]
