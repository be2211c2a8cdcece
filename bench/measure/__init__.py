"""What a run costs, one module per kind of figure; each says what it counts.

- :mod:`storage`: trainable and stored parameters, and the bytes a loader needs (every file listed);
- :mod:`memory`: per phase, the absolute peak and what the phase added above its starting level;
- :mod:`throughput`: real tokens and samples over timed steps, warm-up and pauses outside the window,
  resumable across a restart;
- :mod:`flops`: linear-layer matmul FLOPs from the model's structure over the device's dense peak for
  the precision actually used (MFU);
- :mod:`energy`: the hardware's own energy counters (NVML, RAPL), never an estimate;
- :mod:`environment`: library versions, git state, device and threads, recorded beside every figure.
"""
