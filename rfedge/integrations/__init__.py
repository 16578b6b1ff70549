"""Adapters that make rfedge the PRM of the libraries PRM users run: its_hub, reward_hub, TRL.

Each lives in its own module, imports its library only there, and sits behind an optional extra
(``pip install 'rfedge[its-hub]'``, ``'rfedge[reward-hub]'``, ``'rfedge[trl]'``); ``import rfedge``
imports none of them. Every adapter takes a model directory (default: the model ``rfedge score``
would pick) or a ready :class:`~rfedge.Scorer`, and shares its prefix cache across calls, so a
search that rescores growing partial traces runs only what is new.
"""
