# FRESCO preset "Draft": a quick, cheaper run to try a look before the full translation; the look settings
# (prompt, strength, guidance, ControlNets, model) stay as they are, only what the job costs changes.
import bpy
fresco = bpy.context.scene.sequence_editor.active_strip.fresco

# a short side of 384 px instead of 512: 56 % of the pixels per frame
fresco.size = 384
# a small source processed at its own size, never enlarged
fresco.upscale = False
# 10 steps instead of 20: with the default strength 0.75, 8 denoising steps instead of 15
fresco.steps = 10
# a keyframe every 20 frames instead of adaptive keys 5 to 20 frames apart: fewer frames are denoised, the
# others are propagated from them
fresco.keyframes = 'interval'
fresco.key_interval = 20
# no feature optimisation: each optimised step (the early ones) would run 20 Adam iterations over the decoder's
# features on top of its denoising
fresco.feature_optimization = False
