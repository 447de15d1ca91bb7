"""The serving gateway: an OpenAI-compatible server in front of local checkpoints (sampled by rlhfkit's KV-cached
decoder, requests batched together) or upstream servers (vLLM, SGLang, TGI, another `rlhfkit serve`).

config.py (ServeConfig), app.py (`create_app`, `serve_in_background`), backends.py (local models and their
batchers, run roots followed for hot reload, upstreams, A/B splits), routing.py (which route answers), store.py
(keys, the audit log, feedback, `window` for the flywheel), limits.py (rate and size limits), metrics.py
(Prometheus), cli.py (`rlhfkit serve ...`). See docs/serving.md.
"""
