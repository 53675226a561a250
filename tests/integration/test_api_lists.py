"""Allow and deny lists through the API and the CLI: applied by the API and the worker without a
restart, validated, audited, and removable."""

from __future__ import annotations

import getpass
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta

from api_helpers import Api, transaction
from pipeline_helpers import wait_for

from fraudstream.runners.local import worker_environment


def _declined_by_list(answer: dict[str, object]) -> bool:
    return answer["action"] == "decline" and "deny_listed" in answer["rules_fired"]  # type: ignore[operator]


def test_a_deny_listed_card_is_declined_by_the_api_and_the_stream(api: Api) -> None:
    card = "card-denied"
    before = api.score(transaction(1, card)).json()
    assert before["action"] == "approve"

    added = api.send(
        "POST", "/v1/lists",
        json={"list": "deny", "entity": "card", "value": card, "reason": "confirmed stolen"},
    )  # fmt: skip
    assert added.status_code == 201, added.text
    entry = added.json()
    assert (entry["list"], entry["entity"], entry["value"]) == ("deny", "card", card)
    assert entry["created_by"].startswith(f"key {api.key_ids['analyst']}")

    # the API applies it without a restart, within lists.poll_interval_s
    answers: list[dict[str, object]] = []

    def declined_through_the_api() -> bool:
        answers.append(api.score(transaction(len(answers) + 2, card, amount=1.0)).json())
        return _declined_by_list(answers[-1])

    wait_for(declined_through_the_api, 10, "the API to apply the deny list")
    assert any(r.startswith("deny_listed: card_on_deny_list=true") for r in answers[-1]["reasons"])  # type: ignore[attr-defined]

    # and so does the worker, for the same card arriving through Kafka
    streamed = transaction(50, card)
    api.publish(streamed)
    wait_for(lambda: api.stored_row(streamed["transaction_id"]) is not None, 60, "stored")
    action, _, rules_fired, _, _, _ = api.stored_row(streamed["transaction_id"])  # type: ignore[misc]
    assert action == "decline"
    assert "deny_listed" in rules_fired  # type: ignore[operator]


def test_an_ip_network_entry_is_updated_then_removed_and_every_change_is_audited(api: Api) -> None:
    body = {"list": "deny", "entity": "ip", "value": "198.51.100.0/24", "reason": "botnet"}
    first = api.send("POST", "/v1/lists", json=body)
    assert first.status_code == 201
    entry_id = first.json()["id"]
    later = (datetime.now(UTC) + timedelta(days=30)).isoformat()
    wider = {**body, "reason": "botnet, wider", "expires_at": later}
    updated = api.send("POST", "/v1/lists", key="admin", json=wider)
    assert updated.status_code == 200, "the same value on the same list is one entry"
    assert updated.json()["id"] == entry_id
    assert updated.json()["reason"] == "botnet, wider"

    def decided() -> dict[str, object]:
        """A first payment of a new card, from the listed network."""
        card = f"card-ip-{uuid.uuid4().hex[:8]}"
        return api.score(transaction(1, card, ip="198.51.100.23")).json()  # type: ignore[no-any-return]

    wait_for(lambda: _declined_by_list(decided()), 10, "the network listed")
    listed = api.get("/v1/lists", entity="ip", value="198.51.100.0/24").json()["entries"]
    assert [e["id"] for e in listed] == [entry_id]

    removed = api.send("POST", f"/v1/lists/{entry_id}/remove", json={"reason": "false positive"})
    assert removed.status_code == 200
    assert removed.json()["removed_reason"] == "false positive"
    wait_for(lambda: decided()["action"] == "approve", 10, "the network off the list")
    active = api.get("/v1/lists", entity="ip").json()["entries"]
    assert entry_id not in [e["id"] for e in active]
    kept = api.get(f"/v1/lists/{entry_id}").json()
    assert kept["removed_by"].startswith(f"key {api.key_ids['analyst']}")

    audit = api.pipeline.query(
        "SELECT action, actor, details->>'reason' FROM audit_log"
        f" WHERE entity_type = 'list_entry' AND entity_id = '{entry_id}' ORDER BY id"
    )
    assert [row[0] for row in audit] == ["list_add", "list_update", "list_remove"]
    assert audit[1][1].startswith(f"key {api.key_ids['admin']}")  # type: ignore[union-attr]
    assert [row[2] for row in audit] == ["botnet", "botnet, wider", "false positive"]
    again = api.send("POST", f"/v1/lists/{entry_id}/remove", json={"reason": "twice"})
    assert again.status_code == 404


def test_bad_entries_are_refused_naming_the_field_and_roles_are_enforced(api: Api) -> None:
    good = {"list": "deny", "entity": "customer", "value": "cust-9", "reason": "mule"}
    cases = [
        ({**good, "entity": "ip", "value": "300.1.2.3"}, "value"),
        ({**good, "entity": "card", "value": "4111111111111111"}, "value"),
        ({**good, "expires_at": "2020-01-01T00:00:00Z"}, "expires_at"),
        ({**good, "expires_at": "2030-01-01T00:00:00"}, "expires_at"),
        ({**good, "list": "grey"}, "list"),
        ({**good, "reason": ""}, "reason"),
        ({k: v for k, v in good.items() if k != "reason"}, "reason"),
    ]
    for body, field in cases:
        answer = api.send("POST", "/v1/lists", json=body)
        assert answer.status_code == 422, (body, answer.text)
        assert field in answer.json()["fields"][0]["field"], (body, answer.json())
        assert "4111111111111111" not in answer.text
    assert api.send("POST", "/v1/lists", key="scorer", json=good).status_code == 403
    assert api.get("/v1/lists", key="scorer").status_code == 403
    listed = api.send("POST", "/v1/lists", json=good)
    assert listed.status_code == 201
    no_reason = api.send("POST", f"/v1/lists/{listed.json()['id']}/remove", json={})
    assert no_reason.status_code == 422
    not_json = api.send(
        "POST", "/v1/lists", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert not_json.status_code == 422, not_json.text
    assert not_json.json()["error"] == "invalid_request"
    allow = api.send("PUT", "/v1/lists")
    assert allow.status_code == 405
    assert allow.headers["allow"] == "GET, POST"
    assert api.get("/v1/lists/999999999").status_code == 404


def test_the_cli_manages_lists_and_workers_apply_them(api: Api) -> None:
    environment = {**worker_environment(api.pipeline.settings), "COLUMNS": "250"}

    def cli(*arguments: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "fraudstream", "lists", *arguments],
            env=environment, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip

    added = cli("add", "--list", "deny", "--entity", "customer", "--value", "cust-cli",
                "--reason", "account takeover", "--for", "7d")  # fmt: skip
    assert added.returncode == 0, added.stderr + added.stdout
    assert "added to the deny list" in added.stdout
    shown = cli("show", "--entity", "customer", "--value", "cust-cli")
    assert "account takeover" in shown.stdout
    assert f"cli:{getpass.getuser()}" in shown.stdout

    def probe() -> bool:
        card = f"card-cli-{uuid.uuid4().hex[:8]}"
        return _declined_by_list(api.score(transaction(1, card, customer_id="cust-cli")).json())

    wait_for(probe, 10, "the API to apply the customer's entry")
    streamed = transaction(1, "card-cli", customer_id="cust-cli")
    api.publish(streamed)
    wait_for(lambda: api.stored_row(streamed["transaction_id"]) is not None, 60, "stored")
    assert api.stored_row(streamed["transaction_id"])[0] == "decline"  # type: ignore[index]

    bad = cli("add", "--list", "deny", "--entity", "ip", "--value", "10.0.0.1/8", "--reason", "x")
    assert bad.returncode == 2
    assert "host bits set" in bad.stdout
    entry_id = api.get("/v1/lists", entity="customer", value="cust-cli").json()["entries"][0]["id"]
    removed = cli("remove", str(entry_id), "--reason", "resolved with the customer")
    assert removed.returncode == 0, removed.stdout
    audit = api.pipeline.query(
        "SELECT action FROM audit_log"
        f" WHERE entity_type = 'list_entry' AND entity_id = '{entry_id}' ORDER BY id"
    )
    assert audit == [("list_add",), ("list_remove",)]
