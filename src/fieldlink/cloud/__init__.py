"""The Django project: settings, ASGI application, URL map, middleware, HTTP error mapping."""
