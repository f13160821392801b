"""OpenAPI documentation for routes that parse their own bodies (JSON or multipart)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

# request models referenced from ``requestBody``; app.py adds them to components.schemas
DOCUMENTED_MODELS: list[type[BaseModel]] = []


def _ref(model: type[BaseModel]) -> dict[str, str]:
    if model not in DOCUMENTED_MODELS:
        DOCUMENTED_MODELS.append(model)
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def json_body(model: type[BaseModel]) -> dict[str, Any]:
    return {
        "requestBody": {"required": True, "content": {"application/json": {"schema": _ref(model)}}}
    }


def images_body(model: type[BaseModel]) -> dict[str, Any]:
    """JSON with base64 ``images``, or multipart with ``file`` parts and the same parameters."""
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    form_props: dict[str, Any] = {
        "file": {
            "type": "array",
            "items": {"type": "string", "format": "binary"},
            "description": "One part per image; results keep this order.",
        }
    }
    form_props.update({k: v for k, v in schema["properties"].items() if k != "images"})
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": _ref(model)},
                "multipart/form-data": {
                    "schema": {"type": "object", "required": ["file"], "properties": form_props}
                },
            },
        }
    }


def install(app: Any) -> None:
    """Wrap ``app.openapi`` so the documented request models appear in components."""
    original = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema  # type: ignore[no-any-return]
        spec: dict[str, Any] = original()
        schemas = spec.setdefault("components", {}).setdefault("schemas", {})
        for model in DOCUMENTED_MODELS:
            schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
            schemas.update(schema.pop("$defs", {}))
            schemas[model.__name__] = schema
        app.openapi_schema = spec
        return spec

    app.openapi = openapi
