"""moto's response serializer, the same bytes at a fraction of the CPU (tested moto versions only).

moto 5.2 writes every JSON-protocol response (DynamoDB, SQS, EventBridge, SNS's JSON answers, ...) with a
generic serializer that, for every member of every structure in the answer, builds an attribute-picker
context and asks six alias providers which keys to try (``AttributeValue`` alone has ten members, so a
100-item ``BatchGetItem`` answer asks ~60,000 times). Measured on 2 CPUs: about two thirds of the CPU of a
catalogue update against a 100-copy group went into that question.

For a plain ``dict`` (what moto's DynamoDB and most JSON backends hand the serializer) the answer depends
only on the service, the parent structure's name and the member's name: ``ExplicitAlias`` needs a ``Meta``
class (a dict has none), ``ClassPrefixAlias`` the object's class (always ``dict``), and ``ShapeNameAlias``,
``NoAlias``, ``ShapePrefixAlias`` and ``ModelAlias`` the botocore shapes, which one service model fixes. So
the patch asks the providers once per (service, parent, member) and remembers the keys, then picks the first
key the dict holds, exactly as moto does, and applies moto's response transformers as moto does. Any other
object, a dotted key, a custom provider list or a shape without its parent takes moto's own path.
``tests/integration/test_moto_serializer.py`` serializes real answers both ways and compares the bytes.
"""

from __future__ import annotations

from typing import Any

_ORIGINAL: list[Any] = []
_KEYS: dict[tuple[str, str, str], tuple[str, ...] | None] = {}


def install() -> None:
    """Remember the alias keys per member for plain dicts (idempotent)."""
    from moto.core import serialize

    if _ORIGINAL:
        return
    original = serialize.ResponseSerializer.get_value
    _ORIGINAL.append(original)

    def get_value(self: Any, value: Any, key: str, shape: Any) -> Any:
        picker = self._value_picker
        parent = getattr(shape, "parent", None)
        if (
            type(value) is not dict
            or parent is None
            or type(picker) is not serialize.XFormedAttributePicker
            or picker.alias_providers is not serialize.DEFAULT_ALIAS_PROVIDERS
        ):
            return original(self, value, key, shape)
        slot = (self.service_model.service_name, parent.name, key)
        if slot in _KEYS:
            keys = _KEYS[slot]
        else:
            context = serialize.AttributePickerContext(
                obj=value,
                key=key,
                shape=shape,
                operation_model=self.operation_model,
                service_model=self.service_model,
            )
            found = tuple(picker.get_possible_keys(context))
            keys = _KEYS[slot] = None if any("." in name for name in found) else found
        if keys is None:
            return original(self, value, key, shape)
        picked = None
        for name in keys:
            if name in value:
                picked = value[name]
                break
        if picker.response_transformers:
            key_path = f"{'.'.join(self.path)}.{key}"
            for transform_path, transform in picker.response_transformers.items():
                if key_path.endswith(transform_path):
                    return transform(picked)
        return picked

    serialize.ResponseSerializer.get_value = get_value  # type: ignore[method-assign]


def uninstall() -> None:
    """Give moto its own member lookup back (the equivalence test serializes both ways)."""
    from moto.core import serialize

    if _ORIGINAL:
        serialize.ResponseSerializer.get_value = _ORIGINAL.pop()  # type: ignore[method-assign]
    _KEYS.clear()
