# FRESCO preset "Faithful": the input's composition, outlines and colours kept; the prompt changes the surface.
import bpy
fresco = bpy.context.scene.sequence_editor.active_strip.fresco

# half of the noise schedule: colours and shapes of the input survive, textures and lighting follow the prompt
fresco.strength = 0.5
# 30 steps * strength 0.5 = 15 denoising steps, as many as the defaults (20 * 0.75)
fresco.steps = 30
fresco.guidance_scale = 7.5
fresco.controls.clear()
# canny at 0.9: outlines held firmly, so faces and edges do not drift
item = fresco.controls.add()
item.kind = 'canny'
item.scale = 0.9
# tile at 0.6: conditions on the frame itself, keeping its colour layout and fine detail without freezing it
item = fresco.controls.add()
item.kind = 'tile'
item.scale = 0.6
