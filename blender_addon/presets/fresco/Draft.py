# FRESCO preset "Draft": a quick, cheaper run to try a look before the full translation; the look settings
# (prompt, strength, guidance, ControlNets, model) and the keyframes stay as they are, only what the job costs
# changes.
import bpy
fresco = bpy.context.scene.sequence_editor.active_strip.fresco

# Draft quality: at most 6 scheduler steps (4 denoised at strength 0.75 instead of 15), half the working size's
# sides (25 % of the pixels) and no feature optimisation; Final is the whole translation again
fresco.quality = 'draft'
