"""``rfedge serve``: a local scoring service that speaks vLLM's pooling API (``pip install 'rfedge[serve]'``).

:mod:`.protocol` turns requests into traces and results into vLLM's and rfedge's response shapes,
:mod:`.batcher` gathers concurrent requests into batches for one scorer, :mod:`.app` is the ASGI
application (FastAPI on Starlette, served by uvicorn) with its errors, limits and metrics, and
:mod:`.run` starts it. Nothing here is imported by ``import rfedge``.
"""
