"""The multi-worker demo: a recon-style pipeline of several worker processes and a
coordinator, crashed on purpose and resumed (``bbp-resume demo``)."""
