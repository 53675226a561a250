"""Cases through the API: flags scored by the API and recorded by the worker open one case per
card; analysts assign, comment and close it with verdicts that land in `labels` and the audit
log, deny-listing the card in the same step."""

from __future__ import annotations

import itertools

from api_helpers import Api, transaction
from pipeline_helpers import wait_for


def _case_of(api: Api, card: str, status: str = "open") -> dict[str, object] | None:
    cases = api.get("/v1/cases", card_ref=card, status=status).json()["cases"]
    assert len(cases) <= 1 or status != "open", "one open case per card"
    return cases[0] if cases else None


def test_an_analyst_works_a_case_from_flag_to_verdict(api: Api) -> None:
    card = "card-case"
    answers = [api.score(transaction(n, card)).json() for n in (1, 2, 3)]
    assert [a["action"] for a in answers] == ["approve", "review", "decline"]
    flagged = [a["transaction_id"] for a in answers[1:]]

    def case_with_both() -> bool:
        case = _case_of(api, card)
        return case is not None and case["transactions"] == 2

    wait_for(case_with_both, 60, "the worker to open the card's case")
    case = _case_of(api, card)
    assert case is not None
    case_id = case["id"]
    assert (case["status"], case["highest_action"], case["assignee"]) == ("open", "decline", None)
    assert case["max_score"] == max(a["score"] for a in answers[1:])
    detail = api.get(f"/v1/cases/{case_id}").json()
    assert sorted(t["transaction_id"] for t in detail["transactions"]) == sorted(flagged)
    assert all(t["verdict"] is None for t in detail["transactions"])

    assert api.get("/v1/cases", key="scorer").status_code == 403, "a scorer sees no cases"
    assigned = api.send("POST", f"/v1/cases/{case_id}/assign", json={"assignee": "alice"})
    assert assigned.status_code == 200, assigned.text
    assert assigned.json()["assignee"] == "alice"
    mine = api.get("/v1/cases", assignee="alice").json()["cases"]
    assert case_id in [c["id"] for c in mine]
    assert case_id not in [c["id"] for c in api.get("/v1/cases", assignee="").json()["cases"]]
    commented = api.send("POST", f"/v1/cases/{case_id}/comments", json={"body": "called the bank"})
    assert commented.status_code == 201

    partial = api.send(
        "POST", f"/v1/cases/{case_id}/close", json={"verdicts": {flagged[0]: "fraud"}}
    )
    assert partial.status_code == 409, partial.text
    assert [f["field"] for f in partial.json()["fields"]] == [f"verdicts.{flagged[1]}"]

    verdicts = {flagged[0]: "legitimate", flagged[1]: "fraud"}
    deny = {"reason": "confirmed stolen in case"}
    closed = api.send(
        "POST", f"/v1/cases/{case_id}/close",
        json={"verdicts": verdicts, "comment": "second one was not the holder", "deny_card": deny},
    )  # fmt: skip
    assert closed.status_code == 200, closed.text
    body = closed.json()
    assert (body["case"]["status"], body["case"]["resolution"]) == ("closed", "mixed")
    analyst = f"key {api.key_ids['analyst']} (analyst)"
    assert body["case"]["closed_by"] == analyst

    labels = api.pipeline.query(
        "SELECT transaction_id, is_fraud, source, labelled_by, case_id FROM labels"
        f" WHERE transaction_id IN ('{flagged[0]}', '{flagged[1]}') ORDER BY transaction_id"
    )
    assert labels == sorted(
        (tid, verdict == "fraud", "case", analyst, case_id) for tid, verdict in verdicts.items()
    )
    audit = api.pipeline.query(
        "SELECT action, actor FROM audit_log"
        f" WHERE entity_type = 'case' AND entity_id = '{case_id}' ORDER BY id"
    )
    assert [row[0] for row in audit] == ["case_assign", "case_comment", "case_close"]
    assert {row[1] for row in audit} == {analyst}
    denied = api.get("/v1/lists", list="deny", entity="card", value=card).json()["entries"]
    assert [(e["reason"], e["created_by"]) for e in denied] == [(deny["reason"], analyst)]

    again = api.send("POST", f"/v1/cases/{case_id}/close", json={"verdicts": verdicts})
    assert again.status_code == 409, again.text

    # the card is now declined by the deny list, and its next flag opens a new case
    numbers = itertools.count(10)

    def declined_by_list() -> bool:
        answer = api.score(transaction(next(numbers), card)).json()
        return "deny_listed" in answer["rules_fired"]

    wait_for(declined_by_list, 10, "the API to apply the deny list")
    wait_for(lambda: _case_of(api, card) is not None, 60, "a new case for the card")
    assert _case_of(api, card)["id"] != case_id  # type: ignore[index]


def test_bad_case_requests_are_refused_naming_the_field(api: Api) -> None:
    assert api.get("/v1/cases/987654321").status_code == 404
    missing = api.send("POST", "/v1/cases/987654321/close", json={"verdicts": {"t": "fraud"}})
    assert missing.status_code == 404
    wrong = api.send("POST", "/v1/cases/1/close", json={"verdicts": {"t": "maybe"}})
    assert wrong.status_code == 422
    assert "verdicts" in wrong.json()["fields"][0]["field"]
    empty = api.send("POST", "/v1/cases/1/comments", json={"body": ""})
    assert empty.status_code == 422
    assert api.get("/v1/cases", status="pending").status_code == 422
