"""Request validation: 422s name the field without echoing input, strategy names ignore case,
a rank budget the strategy cuts down says so."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.api.factories import federation_body
from tests.api.world import enroll, make_org

V1 = "/api/v1"


def test_validation_errors_name_the_field_but_never_echo_the_input(
    api: TestClient, admin_headers: dict[str, str]
) -> None:
    secret = "tok-" + "s3cr3t"  # 10 characters: too short for a join token
    r = api.post(f"{V1}/enroll", json={"join_token": secret, "name": "x"})
    assert r.status_code == 422
    assert secret not in r.text
    body = r.json()
    assert body["code"] == "invalid_input"
    [problem] = body["detail"]
    assert problem["loc"] == ["body", "join_token"]
    assert "16 characters" in problem["msg"]
    assert set(problem) == {"loc", "msg", "type"}

    marker = "a private description that must not come back"
    fed = federation_body(description=marker, num_rounds=0)
    r = api.post(f"{V1}/federations", json=fed, headers=admin_headers)
    assert r.status_code == 422
    assert marker not in r.text
    assert [p["loc"] for p in r.json()["detail"]] == [["body", "num_rounds"]]


@pytest.mark.parametrize(("given", "stored"), [("FlexLoRA", "flexlora"), (" FEDAVG ", "fedavg")])
def test_strategy_names_are_case_insensitive(
    api: TestClient, admin_headers: dict[str, str], given: str, stored: str
) -> None:
    r = api.post(f"{V1}/federations", json=federation_body(strategy=given), headers=admin_headers)
    assert r.status_code == 201, r.text
    assert r.json()["strategy"] == stored


def test_unknown_strategy_lists_the_choices(api: TestClient, admin_headers: dict[str, str]) -> None:
    r = api.post(f"{V1}/federations", json=federation_body(strategy="Nope"), headers=admin_headers)
    assert r.status_code == 422
    assert "choose one of fedavg" in r.text


def _federation(api: TestClient, admin: dict[str, str], **fed: Any) -> str:
    r = api.post(f"{V1}/federations", json=federation_body(**fed), headers=admin)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def _member(api: TestClient, admin: dict[str, str], fid: str, client_id: str, rank: int) -> Any:
    body = {"client_id": client_id, "rank_budget": rank}
    return api.post(f"{V1}/federations/{fid}/memberships", json=body, headers=admin)


def test_rank_budget_above_the_global_rank_is_accepted_with_a_warning(
    api: TestClient, admin_headers: dict[str, str]
) -> None:
    client = enroll(api, admin_headers, make_org(api, admin_headers, "org"), "c").client_id
    fid = _federation(api, admin_headers, strategy="flexlora", global_rank=4)
    r = _member(api, admin_headers, fid, client, 8)
    assert r.status_code == 201, r.text
    member = r.json()
    assert (member["rank_budget"], member["trained_rank"]) == (8, 4)
    assert "above the global rank 4" in member["warning"]
    assert "trains this client at rank 4" in member["warning"]
    url = f"{V1}/federations/{fid}/memberships/{member['id']}"
    r = api.patch(url, json={"rank_budget": 3}, headers=admin_headers)
    assert (r.json()["trained_rank"], r.json()["warning"]) == (3, None)
    # the list reads the federation's current global rank
    api.patch(f"{V1}/federations/{fid}", json={"global_rank": 2}, headers=admin_headers)
    [listed] = api.get(f"{V1}/federations/{fid}/memberships", headers=admin_headers).json()["data"]
    assert listed["trained_rank"] == 2
    assert "above the global rank 2" in listed["warning"]


def test_flora_and_fslora_budgets_follow_their_own_rank(
    api: TestClient, admin_headers: dict[str, str]
) -> None:
    client = enroll(api, admin_headers, make_org(api, admin_headers, "org"), "c").client_id
    flora = _federation(api, admin_headers, name="flora", strategy="flora", global_rank=4)
    r = _member(api, admin_headers, flora, client, 16)  # stacked at the full budget, by design
    assert (r.json()["trained_rank"], r.json()["warning"]) == (16, None)
    fslora = _federation(
        api, admin_headers, name="fslora", strategy="fslora", global_rank=4,
        strategy_params={"global_rank": 8},
    )  # fmt: skip
    r = _member(api, admin_headers, fslora, client, 9)
    assert r.json()["trained_rank"] == 8
    assert "above the global rank 8" in r.json()["warning"]


# ----------------------------------------------------------------- what JSON cannot carry here


def _raw(api: TestClient, method: str, url: str, text: str, **headers: str) -> Any:
    """Send ``text`` as the body exactly as written (json= would escape or refuse it)."""
    hdrs = {"Content-Type": "application/json", **headers}
    return api.request(method, url, content=text.encode("utf-8", "surrogatepass"), headers=hdrs)


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ('{"email": "admin\\u0000@x.org", "password": "pw"}', "body['email'] contains a NUL"),
        ('{"email": "a@x.org", "password": "\\ud800"}', "body['password'] contains a lone"),
        ('{"email": "a@x.org", "pass\\u0000word": "x"}', "a key at body['pass\\x00word']"),
    ],
)
def test_anonymous_bodies_with_nul_or_lone_surrogates_get_a_422_naming_where(
    api: TestClient, body: str, fragment: str
) -> None:
    r = _raw(api, "POST", f"{V1}/auth/login", body)
    assert r.status_code == 422, r.text
    assert r.json()["code"] == "invalid_input"
    assert fragment in r.json()["detail"]
    # a join token's enrollment, and without a content type (FastAPI parses it as JSON too)
    r = api.post(f"{V1}/enroll", content=b'{"join_token": "x", "name": "org\\u0000a"}', headers={})
    assert r.status_code == 422
    assert "NUL" in r.json()["detail"]


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_are_refused_and_nothing_stored_changes(
    api: TestClient, admin_headers: dict[str, str], constant: str
) -> None:
    r = api.post(f"{V1}/federations", json=federation_body(), headers=admin_headers)
    assert r.status_code == 201, r.text
    fid, before = r.json()["id"], r.json()
    text = '{"dp": {"mode": "sample", "noise_multiplier": %s}}' % constant  # noqa: UP031
    r = _raw(api, "PATCH", f"{V1}/federations/{fid}", text, **admin_headers)
    assert r.status_code == 422, r.text
    assert f"{constant} is not a number this API accepts" in r.json()["detail"]
    text = '{"description": "nul \\u0000 here"}'
    r = _raw(api, "PATCH", f"{V1}/federations/{fid}", text, **admin_headers)
    assert r.status_code == 422
    after = api.get(f"{V1}/federations/{fid}", headers=admin_headers).json()
    assert (after["dp"], after["description"]) == (before["dp"], before["description"])


def test_a_json_body_over_the_limit_is_refused_before_it_is_parsed(api: TestClient) -> None:
    limit = api.app.state.settings.max_json_body_bytes  # type: ignore[attr-defined]
    big = '{"email": "a@x.org", "password": "' + "x" * limit + '"}'
    r = _raw(api, "POST", f"{V1}/auth/login", big)
    assert r.status_code == 413
    assert r.json()["code"] == "payload_too_large"
    assert f"at most {limit}" in r.json()["detail"]
    # and an ordinary login after it still works on the same client
    r = _raw(api, "POST", f"{V1}/auth/login", '{"email": "nobody@x.org", "password": "x"}')
    assert r.status_code == 401
