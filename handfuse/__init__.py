"""handfuse: fusing depth-based hand pose estimation and pose-based action recognition.

A reproduction of, and a workbench beyond, the 2019 study "Fusing Spatial and
Temporal Models for Joint Hand Pose Estimation and Action Recognition".  The
library is thin: skeleton contract, FPHA reader, synthetic benchmark,
preprocessing, models, training loop, metrics and plots.  The notebooks tell
the story.
"""
__version__ = "0.1.0"
