# FRESCO preset "Strong Restyle": a new look and material for the same motion and layout (needs the depth
# ControlNet and its annotator, Intel/dpt-hybrid-midas: Preferences > Models).
import bpy
fresco = bpy.context.scene.sequence_editor.active_strip.fresco

# nearly all of the schedule: hardly any of the input's colours remain
fresco.strength = 0.9
# 20 steps * strength 0.9 = 18 denoising steps
fresco.steps = 20
fresco.guidance_scale = 8.0
fresco.controls.clear()
# depth at 0.5 keeps where things are (planes, figure against background); canny at 0.5 keeps the main contours
# only loosely: lower than the defaults' 0.7, so the prompt may reshape details
item = fresco.controls.add()
item.kind = 'depth'
item.scale = 0.5
item = fresco.controls.add()
item.kind = 'canny'
item.scale = 0.5
