"""Track A's method on CODA-LM: SPIN's pairs and rounds (spin), paper A's published numbers (paper),
the run's evaluated models (results) and Track A's figures. CODA-LM itself, as VQA items and
submission files, is kit.data.coda_vqa."""
