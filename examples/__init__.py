"""Example applications that enqueue atomq jobs: ``fastapi_app`` (asyncio) and ``wsgi_app``
(a plain WSGI app, as a Django or Flask view would do it). See examples/README.md."""
