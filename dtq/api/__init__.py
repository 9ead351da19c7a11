"""The REST API server: `dtq.api.server.create_app(backend)`.

The rule: every request is untrusted. `body` reads it (media type, size, strict JSON), `auth`
checks the bearer token, `views` renders records and the cluster as JSON, `schema` is the
OpenAPI description. What a request asks for is done by `dtq.client`: the same validation
(`submissions`), backends (`backend`) and errors (`errors`) as an application that submits
over the broker without the server.
"""
