# FRESCO preset "Painterly": shapes kept, surface repainted with visible strokes (needs the softedge ControlNet
# and its annotator, ControlNetHED.pth: Preferences > Models).
import bpy
fresco = bpy.context.scene.sequence_editor.active_strip.fresco

# most of the schedule re-noised: colours and brushwork come from the prompt, the layout still from the input
fresco.strength = 0.8
# 20 steps * strength 0.8 = 16 denoising steps, as many as the defaults give (15)
fresco.steps = 20
# a little above the default 7.5: the style words of the prompt pull harder
fresco.guidance_scale = 9.0
fresco.controls.clear()
# softedge (HED) at 0.8 instead of canny: soft outlines of the large shapes without pinning every texture
# edge, so strokes can form inside them
item = fresco.controls.add()
item.kind = 'softedge'
item.scale = 0.8
