"""raven.kube.typed.TypedInformer: one parse per resourceVersion, the last good value kept, typed events."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry

from raven.api.gateway import Gateway
from raven.kube.client import GATEWAYS, KubeClient
from raven.kube.informer import Informer, InformerEvent
from raven.kube.typed import TypedEvent, TypedInformer


def _gw(rv: str, replicas: object = 1) -> dict[str, Any]:
    return {"metadata": {"name": "gw", "resourceVersion": rv}, "spec": {"tunnelConfig": {"Replicas": replicas}}}


def _typed() -> tuple[TypedInformer[Gateway], list[str], list[TypedEvent[Gateway]]]:
    client: Any = object.__new__(KubeClient)  # never used: events are fed by hand
    parsed: list[str] = []

    def parse(obj: dict[str, Any]) -> Gateway:
        parsed.append(obj["metadata"]["resourceVersion"])
        return Gateway.from_dict(obj)

    typed = TypedInformer(Informer(client, GATEWAYS, "gateways", CollectorRegistry()), parse)
    events: list[TypedEvent[Gateway]] = []
    typed.add_handler(events.append)
    return typed, parsed, events


async def test_each_version_is_parsed_once_and_handlers_get_typed_objects() -> None:
    typed, parsed, events = _typed()
    typed._on_event(InformerEvent("ADDED", _gw("1")))
    typed.store(_gw("1"))  # the same version again (a re-list): not parsed again
    assert parsed == ["1"]
    gw = typed.get("gw")
    assert isinstance(gw, Gateway) and gw.spec.tunnel_replicas == 1
    assert events[0].obj is gw and events[0].old is None and events[0].error is None
    # The validation result is computed once per parsed object, however often it is asked for.
    assert gw.problems is gw.problems


async def test_an_unparsable_version_keeps_the_last_good_value_with_the_error() -> None:
    typed, parsed, events = _typed()
    typed._on_event(InformerEvent("ADDED", _gw("1")))
    good = typed.get("gw")
    typed._on_event(InformerEvent("MODIFIED", _gw("2", "one"), _gw("1")))
    entry = typed.entry("gw")
    assert entry is not None and entry.resource_version == "2"
    assert entry.value is good and entry.current is None and "Replicas" in (entry.error or "")
    assert events[-1].obj is good and events[-1].error == entry.error
    typed._on_event(InformerEvent("DELETED", _gw("2", "one"), _gw("2", "one")))
    assert typed.get("gw") is None and events[-1].type == "DELETED" and events[-1].obj is good
    assert parsed == ["1", "2"]
