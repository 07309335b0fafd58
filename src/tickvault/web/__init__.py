"""HTTP API, Prometheus metrics and the live dashboard of a running pipeline.

``server.HttpServer`` serves ``app.create_app`` inside the pipeline's event loop;
``metrics`` turns the pipeline's counters into Prometheus text; ``static/`` holds the
dashboard (plain HTML, CSS and JavaScript, no external assets).
"""
