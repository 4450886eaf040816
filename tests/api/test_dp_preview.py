"""The DP preview routes with the real app (SQLite and Postgres): a draft's settings, an
existing federation's members' sizes, the warnings, and 4xx with messages that say the fix."""

from __future__ import annotations

import math
import uuid
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from api.db import Membership
from fedlora_client import dp_preview as core
from fedlora_client import protocol as p
from tests.api.factories import FEDERATION_SPEC, federation_body
from tests.api.world import enroll, join, make_org

URL = "/api/v1/federations/dp-preview"
SPEC = FEDERATION_SPEC.model_dump(mode="json")
# FEDERATION_SPEC: two 8 x 6 modules and a 2 x 8 (+2) head; at rank 4 with A frozen:
# B 2 * 8 * 4 = 64, head 18
D_FROZEN_A = 2 * 8 * 4 + 2 * 8 + 2


def draft(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": SPEC,
        "global_rank": 4,
        "num_rounds": 3,
        "clients_per_round": 4,
        "dp": {"mode": "sample", "target_epsilon": 8.0},
    }
    body.update(overrides)
    return body


def codes(preview: dict[str, Any]) -> list[str]:
    return [w["code"] for w in preview["warnings"]]


def test_a_drafts_preview_is_the_sdks_schedule_and_accounting(
    api: TestClient, admin_headers: dict[str, str], app: FastAPI
) -> None:
    r = api.post(URL, json=draft(dataset_sizes=[300, 5120]), headers=admin_headers)
    assert r.status_code == 200, r.text
    got = r.json()
    assert (got["mode"], got["rank"], got["num_rounds"], got["delta"]) == ("sample", 4, 3, 1e-5)
    assert got["dp_parameters"] == D_FROZEN_A
    assert got["dataset_sizes_from"] == "request"
    d, rows = core.preview(
        training=p.LocalTraining(),
        dp=p.DPSettings(mode="sample", target_epsilon=8.0),
        num_rounds=3,
        clients_per_round=4,
        rank=4,
        modules=FEDERATION_SPEC.modules,
        extra_trainable=FEDERATION_SPEC.extra_trainable,
        dataset_sizes=[300, 5120],
    )
    assert d == D_FROZEN_A
    assert [row["num_examples"] for row in got["rows"]] == [300, 5120]
    for row, want in zip(got["rows"], rows, strict=True):
        assert row["logical_batch"] == want.logical_batch
        assert row["steps_per_round"] == p.DP_STEPS_PER_ROUND
        assert row["total_steps"] == 3 * p.DP_STEPS_PER_ROUND
        assert row["sampling_rate"] == pytest.approx(want.sampling_rate)
        assert row["noise_multiplier"] == pytest.approx(want.noise_multiplier)
        assert row["epsilon"] == pytest.approx(8.0, abs=0.02)
        assert row["noise_to_signal"] == pytest.approx(
            row["noise_multiplier"] * math.sqrt(D_FROZEN_A) / row["logical_batch"]
        )
    assert got["rows"][1]["logical_batch"] == p.dp_recipe_batch(5120) == 2048
    # a tiny model at batch 300-2048: the noise is well below the signal, and epsilon 8 is
    # within the default budget of 10
    assert got["warnings"] == []
    ops = app.openapi()["paths"]
    assert ops[URL]["post"]["operationId"] == "federations-preview_dp"
    assert (
        ops["/api/v1/federations/{federation_id}/dp-preview"]["get"]["operationId"]
        == "federations-federation_dp_preview"
    )


def test_client_level_dp_with_few_organizations_is_warned(
    api: TestClient, admin_headers: dict[str, str]
) -> None:
    dp = {"mode": "client", "noise_multiplier": 1.0}
    few = api.post(URL, json=draft(dp=dp, clients_per_round=5), headers=admin_headers).json()
    warning = next(w for w in few["warnings"] if w["code"] == "client_level_few_clients")
    assert warning["message"].startswith(
        "client-level DP adds noise the size of one whole update to an average over 5 "
        "organizations; meaningful with many (hundreds) per round"
    )
    # independent noises of 5 clients: sigma sqrt(d / 5); A is trained without the recipe
    d = few["dp_parameters"]
    assert d == 2 * (8 * 4 + 4 * 6) + 18
    assert few["rows"][0]["noise_to_signal"] == pytest.approx(math.sqrt(d / 5))
    assert "average of clients_per_round" in few["noise_to_signal_basis"]
    many = api.post(URL, json=draft(dp=dp, clients_per_round=500), headers=admin_headers).json()
    assert "client_level_few_clients" not in codes(many)


def test_noise_above_the_signal_and_a_run_over_budget_are_warned(
    api: TestClient, admin_headers: dict[str, str]
) -> None:
    # manual recipe, batch 4 and sigma 3 on ~130 parameters: noise ~8.5x the signal;
    # 3 rounds x 20 steps at q = 4/100 and sigma 3 stay cheap, but sigma 0.3 does not
    training = {"batch_size": 4, "steps": 20}
    noisy = {"mode": "sample", "noise_multiplier": 3.0, "recipe": "manual"}
    r = api.post(
        URL, json=draft(training=training, dp=noisy, dataset_sizes=[100]), headers=admin_headers
    )
    assert r.status_code == 200, r.text
    assert r.json()["rows"][0]["noise_to_signal"] > 1
    warning = next(w for w in r.json()["warnings"] if w["code"] == "noise_dominates")
    assert "organizations of 100 examples" in warning["message"]
    costly = {"mode": "sample", "noise_multiplier": 0.3, "recipe": "manual", "epsilon_budget": 2}
    r = api.post(
        URL, json=draft(training=training, dp=costly, dataset_sizes=[100]), headers=admin_headers
    )
    assert r.json()["rows"][0]["epsilon"] > 2
    assert "over_budget" in codes(r.json())
    off = api.post(URL, json=draft(dp={"mode": "none"}), headers=admin_headers).json()
    assert codes(off) == ["no_guarantee"]
    assert [row["epsilon"] for row in off["rows"]] == [None, None, None]
    assert [row["num_examples"] for row in off["rows"]] == list(core.DEFAULT_DATASET_SIZES)
    assert off["dataset_sizes_from"] == "default"


def test_without_the_model_the_preview_still_gives_sigma_and_epsilon(
    api: TestClient, admin_headers: dict[str, str]
) -> None:
    r = api.post(URL, json=draft(model=None, dataset_sizes=[1000]), headers=admin_headers)
    assert r.status_code == 200, r.text
    row = r.json()["rows"][0]
    assert r.json()["dp_parameters"] is None
    assert row["noise_to_signal"] is None
    assert row["epsilon"] == pytest.approx(8.0, abs=0.02)


@pytest.mark.parametrize(
    ("change", "where", "says"),
    [
        ({"dataset_sizes": [0]}, "dataset_sizes", "greater than or equal to 1"),
        ({"dataset_sizes": list(range(1, 20))}, "dataset_sizes", "at most 12"),
        ({"global_rank": 0}, "global_rank", "greater than or equal to 1"),
        ({"dp": {"mode": "sample"}}, "dp", "exactly one of noise_multiplier and target_epsilon"),
        ({"model": {"modules": {"q": [0, 6]}}}, "model", "greater than or equal to 1"),
        ({"model": {"modules": {"../q": [8, 6]}}}, "model", "dotted identifiers"),
    ],
)
def test_bad_input_is_refused_with_the_field(
    api: TestClient, admin_headers: dict[str, str], change: dict[str, Any], where: str, says: str
) -> None:
    r = api.post(URL, json=draft(**change), headers=admin_headers)
    assert r.status_code == 422, r.text
    problems = r.json()["detail"]
    assert any(item["loc"][1] == where and says in item["msg"] for item in problems), problems


def test_an_unreachable_target_is_a_422_that_says_what_to_change(
    api: TestClient, admin_headers: dict[str, str]
) -> None:
    dp = {"mode": "client", "target_epsilon": 1e-6}
    r = api.post(URL, json=draft(dp=dp, num_rounds=100), headers=admin_headers)
    assert r.status_code == 422, r.text
    assert r.json()["code"] == "invalid_input"
    assert "no noise multiplier between 0.001 and 1000 reaches target_epsilon" in r.json()["detail"]


def test_the_preview_needs_an_admin(api: TestClient) -> None:
    assert api.post(URL, json=draft()).status_code == 401
    fid = uuid.uuid4()
    assert api.get(f"/api/v1/federations/{fid}/dp-preview").status_code == 401


def test_an_existing_federation_is_previewed_for_its_members_sizes(
    api: TestClient, admin_headers: dict[str, str], app_sessions: sessionmaker[Session]
) -> None:
    body = federation_body(
        "client-level", clients_per_round=3, dp={"mode": "client", "noise_multiplier": 1.0}
    )
    r = api.post("/api/v1/federations", json=body, headers=admin_headers)
    assert r.status_code == 201, r.text
    fid = r.json()["id"]
    url = f"/api/v1/federations/{fid}/dp-preview"
    # no member has reported its size yet: the defaults
    before = api.get(url, headers=admin_headers).json()
    assert before["dataset_sizes_from"] == "default"
    assert "client_level_few_clients" in codes(before)
    # members report num_examples with their uploads
    org = make_org(api, admin_headers, "o")
    for i in range(3):
        join(api, admin_headers, fid, enroll(api, admin_headers, org, f"c{i}"))
    with app_sessions() as session:
        rows = session.scalars(
            sa.select(Membership).where(Membership.federation_id == uuid.UUID(fid))
        )
        for row, n in zip(rows.all(), [700, 90, 700], strict=True):
            row.num_examples = n
        session.commit()
    got = api.get(url, headers=admin_headers).json()
    assert got["dataset_sizes_from"] == "members"
    assert [row["num_examples"] for row in got["rows"]] == [90, 700]
    assert got["dp_parameters"] == 2 * (8 * 4 + 4 * 6) + 18
    asked = api.get(url, params={"dataset_sizes": [10, 20]}, headers=admin_headers).json()
    assert [row["num_examples"] for row in asked["rows"]] == [10, 20]
    assert asked["dataset_sizes_from"] == "request"
    bad = api.get(url, params={"dataset_sizes": [0]}, headers=admin_headers)
    assert bad.status_code == 422
    missing = api.get(f"/api/v1/federations/{uuid.uuid4()}/dp-preview", headers=admin_headers)
    assert missing.status_code == 404


def test_many_member_sizes_are_spread_from_the_smallest_to_the_largest() -> None:
    from api.services.dp_preview import spread

    assert spread([5, 1, 5, 3]) == [1, 3, 5]
    picked = spread(list(range(1, 101)))
    assert len(picked) == 12
    assert (picked[0], picked[-1]) == (1, 100)
