"""Rules under management through the API: created and changed with validation, every version
kept with who and why, picked up by the API and the worker without a restart, run in shadow
without moving decisions, measured (hit rate, precision and recall from case verdicts), and
backtested on stored history before they go live."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta

from api_helpers import START, Api, transaction
from pipeline_helpers import wait_for

_numbers = itertools.count(1)


def _card(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _scored(api: Api, card: str, **extra: object) -> dict[str, object]:
    answer = api.score(transaction(next(_numbers), card, **extra))
    assert answer.status_code == 200, answer.text
    return answer.json()  # type: ignore[no-any-return]


def _eventually(api: Api, probe: Callable[[], dict[str, object]], test: Callable[..., bool],
                what: str) -> dict[str, object]:  # fmt: skip
    """Score with `probe` until `test` holds for the answer (a change applies within the poll
    interval); the answer."""
    answers: list[dict[str, object]] = []

    def holds() -> bool:
        answers.append(probe())
        return test(answers[-1])

    wait_for(holds, 15, what)
    return answers[-1]


def _new_rule(api: Api, **fields: object) -> dict[str, object]:
    created = api.send("POST", "/v1/rules", key="admin", json=fields)
    assert created.status_code == 201, created.text
    return created.json()  # type: ignore[no-any-return]


def _change(api: Api, rule_id: str, **fields: object) -> dict[str, object]:
    changed = api.send("PATCH", f"/v1/rules/{rule_id}", key="admin", json=fields)
    assert changed.status_code == 200, changed.text
    return changed.json()  # type: ignore[no-any-return]


def test_a_rule_goes_from_draft_to_shadow_to_live_with_every_version_kept(api: Api) -> None:
    merchant = f"m-{uuid.uuid4().hex[:6]}"
    rule_id = f"big_at_{merchant.replace('-', '_')}"

    def big(card_prefix: str = "card-rule") -> dict[str, object]:
        return _scored(api, _card(card_prefix), amount=6000.0, merchant_id=merchant)

    listed = api.get("/v1/rules")
    assert listed.status_code == 200, listed.text
    by_id = {r["rule"]["id"]: r["rule"] for r in listed.json()["rules"]}
    assert by_id["card_seen_thrice"]["source"] == "file"
    assert by_id["card_seen_thrice"]["status"] == "enabled"

    definition = {
        "id": rule_id, "description": "Large payment at the watched merchant.",
        "expression": f"amount > 5000 AND merchant_id = '{merchant}'", "score": 30,
        "action": "review", "reason": "merchant reported testing of stolen cards",
    }  # fmt: skip
    assert api.send("POST", "/v1/rules", json=definition).status_code == 403, "analyst"
    assert api.send("POST", "/v1/rules", key="scorer", json=definition).status_code == 403
    created = _new_rule(api, **definition)
    assert (created["version"], created["status"], created["source"]) == (1, "draft", "database")
    assert created["changed_by"].startswith(f"key {api.key_ids['admin']}")  # type: ignore[union-attr]
    again = api.send("POST", "/v1/rules", key="admin", json=definition)
    assert again.status_code == 409

    drafted = big()
    assert rule_id not in drafted["rules_fired"] + drafted["shadow_rules_fired"]  # type: ignore[operator]

    _change(api, rule_id, status="shadow", reason="watch it on live traffic")
    shadowed = _eventually(api, big, lambda a: a["shadow_rules_fired"] == [rule_id], "shadow")
    assert shadowed["action"] == "approve", "a shadow rule never moves the decision"
    assert rule_id not in shadowed["rules_fired"]  # type: ignore[operator]

    streamed = transaction(next(_numbers), _card("card-rule-stream"), amount=7000.0,
                           merchant_id=merchant)  # fmt: skip
    api.publish(streamed)
    query = ("SELECT action, rules_fired, shadow_rules_fired FROM transactions"
             f" WHERE transaction_id = '{streamed['transaction_id']}'")  # fmt: skip
    wait_for(lambda: bool(api.pipeline.query(query)), 60, "the worker to store it")
    assert api.pipeline.query(query) == [("approve", [], [rule_id])], "the worker records it too"

    measured = api.get(f"/v1/rules/{rule_id}").json()
    figures = measured["figures"]
    assert figures["hits"] >= 2
    assert figures["decided"] >= figures["hits"]
    assert figures["hit_rate"] == figures["hits"] / figures["decided"]

    stale = api.send("PATCH", f"/v1/rules/{rule_id}", key="admin",
                     json={"status": "enabled", "reason": "go", "expected_version": 1})  # fmt: skip
    assert stale.status_code == 409, "the rule moved on to version 2"
    live = _change(api, rule_id, status="enabled", expected_version=2, reason="go live")
    assert live["version"] == 3
    enabled = _eventually(api, big, lambda a: rule_id in a["rules_fired"], "enabled")
    assert enabled["action"] == "review"
    assert enabled["shadow_rules_fired"] == []

    unchanged = _change(api, rule_id, status="enabled", reason="nothing to do")
    assert unchanged["version"] == 3, "a change to nothing stores no version"

    versions = api.get(f"/v1/rules/{rule_id}/versions").json()["versions"]
    assert [(v["version"], v["status"]) for v in versions] == [
        (3, "enabled"), (2, "shadow"), (1, "draft")
    ]  # fmt: skip
    assert [v["change_reason"] for v in versions] == [
        "go live", "watch it on live traffic", "merchant reported testing of stolen cards"
    ]  # fmt: skip
    audit = api.pipeline.query(
        "SELECT action, actor FROM audit_log WHERE entity_type = 'rule'"
        f" AND entity_id = '{rule_id}' ORDER BY id"
    )
    assert [a for a, _ in audit] == ["rule_create", "rule_update", "rule_update"]
    assert {actor for _, actor in audit} == {f"key {api.key_ids['admin']} (admin)"}

    _change(api, rule_id, status="disabled", reason="done")
    _eventually(api, big, lambda a: a["action"] == "approve", "disabled")


def test_a_bad_rule_or_change_is_refused_naming_the_field(api: Api) -> None:
    base = {"id": "bad_one", "description": "", "score": 10, "reason": "try"}
    cases = [
        ({**base, "expression": "amout > 10"}, "expression", "did you mean 'amount'"),
        ({**base, "expression": "amount > 10; DROP TABLE rules"}, "expression", "';'"),
        ({**base, "expression": "amount + 10"}, "expression", "must be boolean"),
        ({**base, "expression": "sum(amount) > 10"}, "expression", "one transaction at a time"),
        ({**base, "expression": "amount > 10", "score": 101}, "score", ""),
        ({**base, "expression": "amount > 10", "action": "block"}, "action", ""),
        ({**base, "expression": "amount > 10", "id": "Bad-Id"}, "id", ""),
        ({**base, "expression": "amount > 10", "reason": ""}, "reason", ""),
    ]
    for body, field, words in cases:
        refused = api.send("POST", "/v1/rules", key="admin", json=body)
        assert refused.status_code == 422, (body, refused.text)
        problem = refused.json()
        assert [f["field"] for f in problem["fields"]] == [f"body.{field}"], (body, problem)
        assert words in problem["message"] + problem["fields"][0]["message"], (body, problem)
    assert api.get("/v1/rules/bad_one").status_code == 404, "nothing was stored"

    twice = {**base, "id": "card_seen_twice", "expression": "amount > 1"}
    in_file = api.send("POST", "/v1/rules", key="admin", json=twice)
    assert in_file.status_code == 409, "a file rule is changed, not created again"
    broken = {"expression": "tx_count_by_card_1h >=", "reason": "oops"}
    bad_change = api.send("PATCH", "/v1/rules/card_seen_twice", key="admin", json=broken)
    assert bad_change.status_code == 422
    assert bad_change.json()["fields"][0]["field"] == "body.expression"
    assert api.send("PATCH", "/v1/rules/no_such_rule", key="admin",
                    json={"status": "enabled", "reason": "x"}).status_code == 404  # fmt: skip
    assert api.send("PATCH", "/v1/rules/card_seen_twice",
                    json={"status": "disabled", "reason": "x"}).status_code == 403  # fmt: skip
    assert api.get("/v1/rules", key="scorer").status_code == 403


@contextmanager
def _file_rule_disabled(api: Api, rule_id: str) -> Iterator[None]:
    """`rule_id` of the rules file switched off through the API, then back on."""
    _change(api, rule_id, status="disabled", reason="noisy this week")
    try:
        yield
    finally:
        _change(api, rule_id, status="enabled", reason="back on")

        def third_declined() -> bool:
            card = _card("card-restore")
            return [_scored(api, card)["action"] for _ in range(3)][-1] == "decline"

        wait_for(third_declined, 15, "the file rule back on")


def test_a_file_rule_is_switched_off_and_on_without_a_restart(api: Api) -> None:
    with _file_rule_disabled(api, "card_seen_thrice"):

        def third_payment() -> dict[str, object]:
            card = _card("card-thrice")
            return [_scored(api, card) for _ in range(3)][-1]

        answer = _eventually(api, third_payment, lambda a: a["action"] == "review", "disabled")
        assert "card_seen_thrice" not in answer["rules_fired"]  # type: ignore[operator]
        state = api.get("/v1/rules/card_seen_thrice").json()["rule"]
        assert (state["source"], state["status"], state["version"]) == ("database", "disabled", 2)
    versions = api.get("/v1/rules/card_seen_thrice/versions").json()["versions"]
    assert [(v["source"], v["status"]) for v in versions] == [
        ("database", "enabled"), ("database", "disabled"), ("file", "enabled")
    ]  # fmt: skip


def test_case_verdicts_feed_the_precision_and_recall_of_live_and_shadow_rules(api: Api) -> None:
    merchant = f"m-{uuid.uuid4().hex[:6]}"
    live_id, shadow_id = f"live_{merchant[2:]}", f"shadow_{merchant[2:]}"
    _new_rule(api, id=live_id, description="", expression=f"merchant_id = '{merchant}'",
              score=30, action="review", status="enabled", reason="watch")  # fmt: skip
    _new_rule(api, id=shadow_id, description="",
              expression=f"merchant_id = '{merchant}' AND amount > 500", score=30,
              status="shadow", reason="would a threshold help?")  # fmt: skip
    card = _card("card-verdicts")
    _eventually(api, lambda: _scored(api, _card("card-probe"), merchant_id=merchant, amount=600.0),
                lambda a: a["action"] == "review" and a["shadow_rules_fired"] == [shadow_id],
                "both rules applied")  # fmt: skip
    answers = [_scored(api, card, merchant_id=merchant, amount=a) for a in (900.0, 20.0, 800.0)]
    assert [a["shadow_rules_fired"] for a in answers] == [[shadow_id], [], [shadow_id]]

    def the_case() -> dict[str, object] | None:
        cases = api.get("/v1/cases", card_ref=card, status="open").json()["cases"]
        return cases[0] if cases and cases[0]["transactions"] == 3 else None

    wait_for(lambda: the_case() is not None, 60, "the case with the three flags")
    case = the_case()
    assert case is not None
    ids = [a["transaction_id"] for a in answers]
    verdicts = {ids[0]: "fraud", ids[1]: "legitimate", ids[2]: "legitimate"}
    closed = api.send("POST", f"/v1/cases/{case['id']}/close", json={"verdicts": verdicts})
    assert closed.status_code == 200, closed.text

    rules = {r["rule"]["id"]: r["figures"] for r in api.get("/v1/rules").json()["rules"]}
    fraud_labels = api.pipeline.query(
        "SELECT count(*) FROM labels WHERE is_fraud AND labelled_at >= now() - interval '90 days'"
    )[0][0]
    # the live rule fired on all three: one fraud, two legitimate
    assert (rules[live_id]["fraud_hits"], rules[live_id]["legitimate_hits"]) == (1, 2)
    assert rules[live_id]["precision"] == 1 / 3
    assert rules[live_id]["recall"] == 1 / fraud_labels
    # the shadow rule, on the two large ones: one fraud, one legitimate
    assert (rules[shadow_id]["fraud_hits"], rules[shadow_id]["legitimate_hits"]) == (1, 1)
    assert rules[shadow_id]["precision"] == 1 / 2
    for rule_id in (live_id, shadow_id):
        _change(api, rule_id, status="disabled", reason="test over")


def test_a_draft_is_backtested_on_stored_history_before_it_goes_live(api: Api) -> None:
    merchant = f"m-{uuid.uuid4().hex[:6]}"
    amounts = [100.0, 700.0, 650.0, 40.0, 900.0, 520.0]
    cards = [_card("card-bt") for _ in amounts]
    answers = [_scored(api, card, merchant_id=merchant, amount=a)
               for card, a in zip(cards, amounts, strict=True)]  # fmt: skip
    ids = [a["transaction_id"] for a in answers]
    stored = f"SELECT count(*) FROM transactions WHERE merchant_id = '{merchant}'"
    wait_for(lambda: api.pipeline.query(stored)[0][0] == len(ids), 60, "the worker to store them")
    labels = {ids[1]: True, ids[2]: False, ids[4]: True, ids[0]: False}
    with_values = ", ".join(f"('{t}', {str(f).lower()}, 'test')" for t, f in labels.items())
    api.pipeline.query(  # the query helper fetches: return the ids
        "INSERT INTO labels (transaction_id, is_fraud, source) VALUES "
        f"{with_values} RETURNING transaction_id"
    )
    rule_id = f"over_500_{merchant[2:]}"
    _new_rule(api, id=rule_id, description="", score=30, action="review",
              expression=f"merchant_id = '{merchant}' AND amount > 500", reason="idea")  # fmt: skip

    window = {"days": 1, "until": (START + timedelta(hours=12)).isoformat()}
    assert api.send("POST", f"/v1/rules/{rule_id}/backtest", json=window).status_code == 403
    ran = api.send("POST", f"/v1/rules/{rule_id}/backtest", key="admin", json=window)
    assert ran.status_code == 200, ran.text
    report = ran.json()
    large = [i for i, a in enumerate(amounts) if a > 500]
    assert report["hits"] == len(large) == 4
    assert (report["fraud_hits"], report["legitimate_hits"], report["unlabelled_hits"]) == (2, 1, 1)
    assert report["precision"] == 2 / 3
    assert report["action_changes"] == {"approve->review": len(large)}
    assert report["transactions"] >= len(amounts)
    assert api.get(f"/v1/rules/{rule_id}").json()["rule"]["status"] == "draft", "still a draft"
    before = {"days": 1, "until": (START - timedelta(days=30)).isoformat()}
    empty = api.send("POST", f"/v1/rules/{rule_id}/backtest", key="admin", json=before)
    assert empty.status_code == 200
    assert (empty.json()["transactions"], empty.json()["hits"]) == (0, 0)
