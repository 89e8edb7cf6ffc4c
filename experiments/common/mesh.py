"""The name of the device mesh's one axis, shared by the training step and the input that shards its batches.

Training is data-parallel: replicas, and the shards of every batch, are laid along this axis
(``Mesh(devices, (AXIS,))``); the step's collectives (``lax.pmean``) reduce over it.
"""

AXIS = "batch"
