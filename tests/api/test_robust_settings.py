"""The robust-aggregation settings through the API: a federation's `robust_aggregation` and a
membership's `max_examples` (docs/security.md#robust-aggregation). Bad values are a 422 that
names the field; the defence can be tightened while a federation runs."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.api.factories import federation_body
from tests.api.world import build_world, start


def test_defaults_are_stored_and_shown(api: TestClient, admin_headers: dict[str, str]) -> None:
    r = api.post("/api/v1/federations", json=federation_body(), headers=admin_headers)
    assert r.status_code == 201, r.text
    robust = r.json()["robust_aggregation"]
    assert robust["max_client_weight_share"] == 0.5
    assert robust["norm_bound"] == "adaptive"
    assert robust["norm_bound_multiple"] == 5.0
    assert robust["rule"] == "mean"


@pytest.mark.parametrize(
    ("robust", "field"),
    [
        ({"max_client_weight_share": 0}, "max_client_weight_share"),
        ({"max_client_weight_share": 1.5}, "max_client_weight_share"),
        ({"norm_bound": "fixed"}, "norm_bound_value"),
        ({"norm_bound_multiple": 0.5}, "norm_bound_multiple"),
        ({"rule": "mode"}, "rule"),
        ({"trim_fraction": 0.5}, "trim_fraction"),
        ({"surprise": 1}, "surprise"),
    ],
)
def test_bad_settings_are_a_422_naming_the_field(
    api: TestClient, admin_headers: dict[str, str], robust: dict[str, Any], field: str
) -> None:
    body = federation_body(robust_aggregation=robust)
    r = api.post("/api/v1/federations", json=body, headers=admin_headers)
    assert r.status_code == 422, r.text
    assert field in r.text


def test_a_robust_rule_is_refused_where_it_is_undefined(
    api: TestClient, admin_headers: dict[str, str]
) -> None:
    body = federation_body(strategy="flexlora", robust_aggregation={"rule": "median"})
    r = api.post("/api/v1/federations", json=body, headers=admin_headers)
    assert r.status_code == 422, r.text
    assert "fedavg only" in r.text


def test_settings_can_be_tightened_while_running(
    api: TestClient, admin_headers: dict[str, str]
) -> None:
    world = build_world(api, admin_headers)
    start(api, world)
    url = f"/api/v1/federations/{world.federation_id}"
    r = api.patch(url, json={"robust_aggregation": {"norm_bound": "fixed"}}, headers=admin_headers)
    assert r.status_code == 422, r.text
    tight = {"norm_bound": "fixed", "norm_bound_value": 2.0, "max_client_weight_share": 0.3}
    r = api.patch(url, json={"robust_aggregation": tight}, headers=admin_headers)
    assert r.status_code == 200, r.text
    assert r.json()["robust_aggregation"]["norm_bound_value"] == 2.0
    assert r.json()["robust_aggregation"]["max_client_weight_share"] == 0.3


def test_membership_max_examples(api: TestClient, admin_headers: dict[str, str]) -> None:
    world = build_world(api, admin_headers)
    url = f"/api/v1/federations/{world.federation_id}/memberships"
    for bad in (0, -1, 2_000_000_000, True, "10", 1.5):
        r = api.post(
            url,
            json={"client_id": world.a2.client_id, "rank_budget": 2, "max_examples": bad},
            headers=admin_headers,
        )
        assert r.status_code == 422, (bad, r.text)
        assert "max_examples" in r.text
    r = api.post(
        url,
        json={"client_id": world.a2.client_id, "rank_budget": 2, "max_examples": 500},
        headers=admin_headers,
    )
    assert r.status_code == 201, r.text
    assert r.json()["max_examples"] == 500
    r = api.patch(f"{url}/{r.json()['id']}", json={"max_examples": 50}, headers=admin_headers)
    assert r.status_code == 200, r.text
    assert r.json()["max_examples"] == 50
