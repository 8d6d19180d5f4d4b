"""The OpenAPI document declares what FastAPI leaves out: the bearer scheme on every ``/v1``
operation and every error answer in the API's one error shape (checked against real error
bodies); its two viewers load nothing from other hosts."""

from __future__ import annotations

import re

import httpx
import jsonschema

from .conftest import LiveServer


def test_every_v1_operation_declares_the_bearer_scheme_and_the_error_shape(
    server: LiveServer,
) -> None:
    with server.client("tok-bob") as bob:
        document = bob.get("/openapi.json").json()
        errors = [
            bob.get("/v1/runs/nope"),  # 404
            bob.get("/v1/runs", params={"status": "bogus"}),  # 422
            bob.post("/v1/flows/greet/runs", json={"inputs": {}}),  # 422: name is required
        ]
        with httpx.Client(base_url=server.url) as anonymous:
            errors.append(anonymous.get("/v1/runs"))  # 401
    assert document["components"]["securitySchemes"]["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": document["components"]["securitySchemes"]["bearer"]["description"],
    }
    schema = document["components"]["schemas"]["Error"]
    operations = [
        (path, method, operation)
        for path, methods in document["paths"].items()
        if path.startswith("/v1/")
        for method, operation in methods.items()
    ]
    assert len(operations) >= 10
    for path, method, operation in operations:
        assert operation["security"] == [{"bearer": []}], (path, method)
        for status in ("401", "404", "409", "422", "503"):
            content = operation["responses"][status]["content"]["application/json"]
            assert content["schema"] == {"$ref": "#/components/schemas/Error"}, (path, status)
    assert "HTTPValidationError" not in document["components"]["schemas"]
    for response in errors:
        assert response.status_code in (401, 404, 422), response.text
        jsonschema.validate(response.json(), schema)


def test_the_viewers_load_their_assets_from_this_server_only(server: LiveServer) -> None:
    with server.client("tok-bob") as bob:
        for page in ("/docs", "/redoc"):
            html = bob.get(page).text
            sources = re.findall(r"""(?:src|href)=["']([^"']+)["']""", html)
            assert sources, html
            for source in sources:
                assert not source.startswith(("http:", "https:", "//")), (page, source)
                if source.startswith("/docs-assets/") and not source.endswith("/none"):
                    asset = bob.get(source)
                    assert asset.status_code == 200 and len(asset.content) > 100_000, source
        assert bob.get("/docs-assets/../pyproject.toml").status_code == 404
        assert bob.get("/docs-assets/secret").status_code == 404
