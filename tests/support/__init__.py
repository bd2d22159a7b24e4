"""Test support written once, shared by tests/ and benchmarks/.

* ``synthetic``: random panoramic GT/prediction pairs in the evaluators' input format;
* ``synthpass``: a tiny synthpass data set (seconds to build);
* ``releases``: hand-drawn frames in the ASD / KITTI-360-APS release formats;
* ``maps``: synthetic softmax maps and detections, as the prediction store holds them;
* ``reference``: transcriptions of the reference's helpers, used as oracles;
* ``fake_gcs``: ``gs://`` served from memory; ``jit_traces``: retrace counting.

Benchmarks put the repository root on ``sys.path`` and import ``tests.support``.
"""
