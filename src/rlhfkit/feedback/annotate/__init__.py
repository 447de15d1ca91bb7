"""The annotation app: people label preference pairs in the browser; admins calibrate, monitor and export.

`rlhfkit annotate ...` (cli.py) drives it; `create_app(db)` (app.py) is the FastAPI app; service.py holds the
workflow (queues, calibration, anchors, dynamic sampling, statistics, export); models.py and migrations/ the store.
"""
