"""rsgen's base layer: atomic writes, hashing, devices, seeds and progress bars.

Every rsgen package (``conditions``, ``pipelines``, ``synth_datasets``, ``gen``) may import ``core``;
``core`` imports none of them.
"""
