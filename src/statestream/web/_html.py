"""The pages, as escaped strings: every value from a store, a workflow or a request goes
through :func:`e` (``html.escape`` with quotes), and no page carries an inline script."""

from __future__ import annotations

import html
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import urlencode

from .._core.records import Event, Header, ParkedEvent
from .._core.runstate import RunState
from ._data import (
    ACTIONS,
    MAX_EVENTS,
    AnyWorkflow,
    Details,
    Listing,
    RunQuery,
    actions_for,
    count_text,
    fmt_time,
    object_text,
    status_name,
)

__all__ = ["Page", "e"]


def e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _state_label(event: Event) -> str:
    """The run state an event's header names, as its label ("" when absent or unknown)."""
    value = event.headers.get(Header.RUN_STATE.value, "")
    try:
        return RunState(int(value)).label
    except ValueError:
        return value


_VERBS = {
    "pause": ("Pause", "Pause this run: steps, callbacks and timeouts leave it alone."),
    "resume": ("Resume", "Resume this run: the step at its status runs again."),
    "cancel": ("Cancel", "Cancel this run for good. It cannot be resumed."),
    "delete": ("Delete data", "Scrub this finished run's object (GDPR). It cannot be undone."),
}


class Page:
    """Renders pages for one request: ``base`` is the mount path, ``csrf`` the form token."""

    def __init__(
        self,
        base: str,
        csrf: str,
        *,
        level: int,
        workflows: Sequence[str],
        title: str,
        login_possible: bool,
    ) -> None:
        self.base = base
        self.csrf = csrf
        self.level = level
        self.workflows = workflows
        self.title = title
        self.login_possible = login_possible

    def url(self, path: str, params: Mapping[str, str] | None = None) -> str:
        query = f"?{urlencode(dict(params))}" if params else ""
        return f"{self.base}{path}{query}"

    def _csrf_field(self) -> str:
        return f'<input type="hidden" name="csrf" value="{e(self.csrf)}">'

    def layout(
        self,
        heading: str,
        body: str,
        *,
        active: str = "",
        workflow: str = "",
        live: str = "",
        scripts: Iterable[str] = (),
    ) -> str:
        params = {"workflow": workflow} if workflow else {}
        nav = [
            ("runs", "Runs", self.url("/", params)),
            ("graph", "Graph", self.url("/graph", params)),
            ("parked", "Parked & processes", self.url("/parked", params)),
        ]
        links = "".join(
            f'<a href="{e(href)}"{" class=active" if key == active else ""}>{e(text)}</a>'
            for key, text, href in nav
        )
        if self.level >= 2:
            who = (
                f'<form method="post" action="{e(self.url("/logout"))}" class="inline">'
                f'{self._csrf_field()}<span class="badge write">operator</span>'
                '<button class="link">Sign out</button></form>'
            )
        elif self.login_possible:
            who = (
                '<span class="badge read">read only</span>'
                f'<a href="{e(self.url("/login"))}">Sign in</a>'
            )
        else:
            who = '<span class="badge read">read only</span>'
        tags = "".join(
            f'<script src="{e(self.url("/static/" + name))}" defer></script>'
            for name in (*scripts, "app.js")
        )
        live_attr = f' data-live="{e(live)}"' if live else ""
        return (
            "<!doctype html><html lang=en><head><meta charset=utf-8>"
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            '<link rel="icon" href="data:,">'
            f"<title>{e(heading)} · {e(self.title)}</title>"
            f'<link rel="stylesheet" href="{e(self.url("/static/app.css"))}">{tags}</head>'
            f"<body{live_attr}><header><span class=brand>{e(self.title)}</span>"
            f"<nav>{links}</nav><span class=who>{who}</span></header>"
            f"<main><h1>{e(heading)}</h1>{body}</main></body></html>"
        )

    # ------------------------------------------------------------------ runs list

    def _workflow_select(self, current: str) -> str:
        if len(self.workflows) < 2:
            return f'<input type="hidden" name="workflow" value="{e(current)}">'
        options = "".join(
            f"<option{' selected' if name == current else ''}>{e(name)}</option>"
            for name in self.workflows
        )
        return f'<label>Workflow <select name="workflow">{options}</select></label>'

    def runs(self, query: RunQuery, listing: Listing) -> str:
        wf = query.workflow
        p = query.params
        status_opts = '<option value="">any</option>' + "".join(
            f'<option value="{e(s.name)}"{" selected" if query.statuses == (int(s),) else ""}>'
            f"{e(s.name)}</option>"
            for s in wf.graph
        )
        state_opts = '<option value="">any</option>' + "".join(
            f'<option value="{e(s.name.lower())}"{" selected" if query.states == (s,) else ""}>'
            f"{e(s.label)}</option>"
            for s in RunState
            if s.valid
        )
        filters = (
            f'<form method="get" action="{e(self.url("/"))}" class="filters">'
            f"{self._workflow_select(wf.name)}"
            f'<label>Status <select name="status">{status_opts}</select></label>'
            f'<label>Run state <select name="state">{state_opts}</select></label>'
            f'<label>Foreign ID <input name="foreign_id" maxlength="256" '
            f'value="{e(p.get("foreign_id", ""))}"></label>'
            f'<label>Created from <input name="from" placeholder="2026-12-01T09:00" '
            f'value="{e(p.get("from", ""))}"></label>'
            f'<label>to <input name="to" placeholder="2026-12-02" value="{e(p.get("to", ""))}">'
            "</label>"
            '<button type="submit">Filter</button>'
            f'<a class="button secondary" href="{e(self.url("/", {"workflow": wf.name}))}">'
            "Clear</a></form>"
        )
        rows = "".join(self._run_row(wf, r) for r in listing.records)
        if not rows and not listing.partial:
            rows = '<tr class="empty"><td colspan="7">No runs match.</td></tr>'
        partial = ""
        if listing.partial:
            # No index has the status: a page examines a bounded number of runs (SCAN_ROWS).
            found = f"Only {len(listing.records)} matches" if listing.records else "No matches"
            which, button = (
                ("next newer", "← Newer")
                if query.before
                else ("next older", "Older →")
                if query.after
                else ("most recent", "Older →")
            )
            partial = (
                f'<p class="hint partial" role="status">Partial page: {found} in the '
                f"{listing.scanned:,} {which} runs examined; look further with {button}.</p>"
            )
        pager = []
        link = '<a class="button secondary" href="{}">{}</a>'
        if listing.newer:
            pager.append(link.format(e(self.url("/", {**p, "before": listing.newer})), "← Newer"))
        if query.after or query.before:
            pager.append(link.format(e(self.url("/", p)), "Newest"))
        if listing.older:
            pager.append(link.format(e(self.url("/", {**p, "after": listing.older})), "Older →"))
        api = "" if (query.after or query.before) else self.url("/api/runs", p)
        table = (
            f'<table class="runs" data-api="{e(api)}" data-run-url="{e(self.url("/runs/"))}">'
            "<thead><tr><th>Run ID</th><th>Foreign ID</th><th>Status</th><th>Run state</th>"
            "<th>Version</th><th>Created</th><th>Updated</th></tr></thead>"
            f"<tbody>{rows}</tbody></table>"
        )
        note = (
            '<p class="hint">Newest first; this page refreshes itself every few seconds.</p>'
            if api
            else '<p class="hint">Newest first. Go to the newest page for live updates.</p>'
        )
        body = f"{filters}{note}{partial}{table}<div class=pager>{''.join(pager)}</div>"
        return self.layout(f"Runs of {wf.name}", body, active="runs", workflow=wf.name, live="runs")

    def _run_row(self, wf: AnyWorkflow, r: Any) -> str:
        href = self.url(f"/runs/{r.run_id}")
        return (
            f'<tr><td class="mono"><a href="{e(href)}">{e(r.run_id)}</a></td>'
            f"<td>{e(r.foreign_id)}</td><td>{e(status_name(wf, r.status))}</td>"
            f'<td><span class="state {e(r.run_state.name.lower())}">{e(r.run_state.label)}'
            f"</span></td><td>{r.version}</td><td>{e(fmt_time(r.created_at))}</td>"
            f"<td>{e(fmt_time(r.updated_at))}</td></tr>"
        )

    # ------------------------------------------------------------------ one run

    def run(self, wf: AnyWorkflow, d: Details, notice: str = "") -> str:
        r = d.record
        allowed = actions_for(r.run_state)
        fields = [
            ("Workflow", e(r.workflow_name), ""),
            ("Run ID", e(r.run_id), "run_id"),
            ("Foreign ID", e(r.foreign_id), "foreign_id"),
            ("Status", e(status_name(wf, r.status)), "status_name"),
            (
                "Run state",
                f'<span class="state {e(r.run_state.name.lower())}">{e(r.run_state.label)}</span>',
                "run_state",
            ),
            ("Reason", e(r.run_state_reason) or "—", "reason"),
            ("Version", str(r.version), "version"),
            ("Created", e(fmt_time(r.created_at)), "created_at"),
            ("Updated", e(fmt_time(r.updated_at)), "updated_at"),
        ]
        dl = "".join(
            f"<dt>{e(k)}</dt><dd{f' data-field={chr(34)}{f}{chr(34)}' if f else ''}>{v}</dd>"
            for k, v, f in fields
        )
        buttons = "".join(
            f'<a class="button {"danger" if a in ("cancel", "delete") else ""}" '
            f'data-action="{a}"{"" if a in allowed else " hidden"} '
            f'href="{e(self.url(f"/runs/{r.run_id}/confirm/{a}"))}">{_VERBS[a][0]}</a>'
            for a in ACTIONS
        )
        if self.level < 2:
            buttons += '<span class="hint">Sign in with the write token to change runs.</span>'
        text, is_json = object_text(r.object)
        obj = f'<pre class="object">{e(text)}</pre>'
        if not is_json:
            obj = '<p class="hint">The object is not JSON; its first bytes:</p>' + obj
        banner = f'<p class="notice">{e(notice)}</p>' if notice else ""
        body = (
            f"{banner}<section class=card><dl class=fields>{dl}</dl>"
            f'<div class="actions">{buttons}</div></section>'
            f"<h2>Object</h2>{obj}"
            f"<h2>History</h2>{self._history(wf, d)}"
            f"<h2>Pending timeouts</h2>{self._timeouts(wf, d)}"
            f"<h2>Errors</h2>{self._errors(d)}"
        )
        return self.layout(
            f"Run {r.foreign_id}",
            f'<div data-api="{e(self.url(f"/api/runs/{r.run_id}"))}" id="run">{body}</div>',
            active="runs",
            workflow=wf.name,
            live="run",
        )

    def _history(self, wf: AnyWorkflow, d: Details) -> str:
        if d.history is None and d.events:
            return self._events(wf, d)
        if d.history is None or not d.history:
            return (
                '<p class="hint">This record store keeps only the current version of a run '
                "(its events are consumed and pruned); the current record is shown above.</p>"
            )
        rows = "".join(
            f"<tr><td>{h.version}</td><td>{e(status_name(wf, h.status))}</td>"
            f'<td><span class="state {e(h.run_state.name.lower())}">{e(h.run_state.label)}'
            f"</span></td><td>{e(h.run_state_reason)}</td><td>{e(fmt_time(h.updated_at))}</td></tr>"
            for h in reversed(d.history)
        )
        return (
            "<table><thead><tr><th>Version</th><th>Status</th><th>Run state</th><th>Reason</th>"
            f"<th>Written</th></tr></thead><tbody>{rows}</tbody></table>"
        )

    def _events(self, wf: AnyWorkflow, d: Details) -> str:
        events = d.events or []
        rows = "".join(
            f"<tr><td>{e(ev.headers.get(Header.RECORD_VERSION.value, ''))}</td>"
            f"<td>{e(status_name(wf, ev.type))}</td><td>{e(_state_label(ev))}</td>"
            f"<td>{e(ev.topic)}</td><td>{e(fmt_time(ev.created_at))}</td></tr>"
            for ev in events
        )
        more = (
            f'<p class="hint">The oldest {len(events)} shown.</p>'
            if len(events) >= MAX_EVENTS
            else ""
        )
        return (
            '<p class="hint">This record store keeps only the current version of a run; these '
            "are the run's events the event streamer still retains (older ones are pruned), "
            "oldest first.</p>"
            '<table id="events"><thead><tr><th>Version</th><th>Status</th><th>Run state</th>'
            f"<th>Topic</th><th>Written</th></tr></thead><tbody>{rows}</tbody></table>{more}"
        )

    def _timeouts(self, wf: AnyWorkflow, d: Details) -> str:
        if wf.timeout_store is None:
            return '<p class="hint">This workflow has no timeout store.</p>'
        if not d.timeouts:
            return '<p class="hint">None.</p>'
        rows = "".join(
            f"<tr><td>{t.id}</td><td>{e(status_name(wf, t.status))}</td><td>{t.run_version}</td>"
            f"<td>{e(fmt_time(t.expire_at))}</td><td>{e(fmt_time(t.claimed_until))}</td></tr>"
            for t in d.timeouts
        )
        return (
            "<table><thead><tr><th>ID</th><th>At status</th><th>Visit (version)</th>"
            f"<th>Expires</th><th>Claimed until</th></tr></thead><tbody>{rows}</tbody></table>"
        )

    def _errors(self, d: Details) -> str:
        parts = []
        r = d.record
        if r.run_state is RunState.PAUSED and r.run_state_reason:
            parts.append(f'<p>Paused: <span class="error">{e(r.run_state_reason)}</span></p>')
        if d.parked:
            parts.append(self._parked_table(d.parked, r.workflow_name))
        return "".join(parts) or '<p class="hint">None recorded.</p>'

    def confirm(self, wf: AnyWorkflow, run_id: str, foreign_id: str, action: str) -> str:
        verb, text = _VERBS[action]
        reason = (
            '<label class="block">Reason (stored with the run)'
            '<input name="reason" maxlength="1000" autofocus></label>'
            if action != "resume"
            else ""
        )
        danger = " danger" if action in ("cancel", "delete") else ""
        body = (
            f'<section class="card confirm"><p>{e(text)}</p>'
            f'<p>Run <span class="mono">{e(run_id)}</span> of <b>{e(foreign_id)}</b> '
            f"in workflow <b>{e(wf.name)}</b>.</p>"
            f'<form method="post" action="{e(self.url(f"/runs/{run_id}/{action}"))}">'
            f'{self._csrf_field()}{reason}<div class="actions">'
            f'<button type="submit" class="{danger.strip()}" id="confirm">{e(verb)} run</button>'
            f'<a class="button secondary" href="{e(self.url(f"/runs/{run_id}"))}">Back</a>'
            "</div></form></section>"
        )
        return self.layout(f"{verb} run {foreign_id}?", body, active="runs", workflow=wf.name)

    # ------------------------------------------------------------------ graph

    def graph(
        self, wf: AnyWorkflow, source: str, counts: Mapping[int, int], exact: bool = False
    ) -> str:
        rows = "".join(
            f'<tr><td>{e(s.name)}</td><td class="num" data-count="{int(s)}">'
            f'<a href="{e(self.url("/", {"workflow": wf.name, "status": s.name}))}">'
            f"{e(count_text(counts.get(int(s), 0), exact))}</a></td></tr>"
            for s in wf.graph
        )
        body = (
            f'<div class="graph-wrap"><pre class="mermaid" id="graph" '
            f'data-api="{e(self.url("/api/graph", {"workflow": wf.name}))}">{e(source)}</pre>'
            f'<table class="counts"><thead><tr><th>Status</th><th>Runs</th></tr></thead>'
            f"<tbody>{rows}</tbody></table></div>"
            '<p class="hint">Counts of runs at each status (of any run state), refreshed every '
            "few seconds.</p>"
        )
        return self.layout(
            f"Graph of {wf.name}",
            body,
            active="graph",
            workflow=wf.name,
            live="graph",
            scripts=("mermaid.min.js",),
        )

    # ------------------------------------------------------------------ parked

    def _parked_table(self, parked: Sequence[ParkedEvent], workflow: str) -> str:
        rows = []
        for p in parked:
            button = (
                f'<form method="post" action="{e(self.url("/parked/retry"))}" class="inline">'
                f'{self._csrf_field()}<input type="hidden" name="workflow" value="{e(workflow)}">'
                f'<input type="hidden" name="parked_id" value="{e(p.id)}">'
                f"<button>Retry</button></form>"
                if not p.retry_requested
                else '<span class="badge read">retry requested</span>'
            )
            rows.append(
                f'<tr><td class="mono">{e(p.id)}</td><td>{e(p.consumer)}</td>'
                f'<td class="mono"><a href="{e(self.url(f"/runs/{p.event.key}"))}">'
                f"{e(p.event.key)}</a></td><td>{p.attempts}</td>"
                f'<td class="error">{e(p.error)}</td><td>{e(fmt_time(p.parked_at))}</td>'
                f"<td>{button}</td></tr>"
            )
        return (
            '<table class="parked"><thead><tr><th>ID</th><th>Consumer</th><th>Run</th>'
            "<th>Attempts</th><th>Error</th><th>Parked</th><th></th></tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>"
        )

    def parked(
        self, wf: AnyWorkflow, parked: Sequence[ParkedEvent], info: Mapping[str, Any], notice: str
    ) -> str:
        banner = f'<p class="notice">{e(notice)}</p>' if notice else ""
        table = (
            self._parked_table(parked, wf.name)
            if parked
            else '<p class="hint">No parked events.</p>'
        )
        rows = "".join(
            f"<tr><td>{e(name)}</td><td>{e(i.role)}</td>"
            f'<td><span class="pstate {e(i.state.name.lower())}">{e(i.state.name.title())}'
            f"</span></td><td>{i.lag:.1f} s</td><td>{i.errors}</td><td>{i.parked}</td>"
            f'<td class="error">{e(i.last_error)}</td></tr>'
            for name, i in info.items()
        )
        body = (
            f"{banner}<h2>Parked events</h2>"
            '<p class="hint">Events a consumer gave up on after repeated errors. Retry asks the '
            "consumer holding the role to handle one again.</p>"
            f"{table}<h2>Processes of this instance</h2>"
            '<p class="hint">The background processes as this process sees them: Unknown when '
            "this process serves only the UI and a separate worker runs the workflow.</p>"
            "<table><thead><tr><th>Process</th><th>Role</th><th>State</th><th>Lag</th>"
            f"<th>Errors</th><th>Parked</th><th>Last error</th></tr></thead><tbody>{rows}</tbody>"
            "</table>"
        )
        return self.layout(f"Parked events of {wf.name}", body, active="parked", workflow=wf.name)

    # ------------------------------------------------------------------ misc

    def login(self, message: str = "", next_url: str = "") -> str:
        banner = f'<p class="notice error">{e(message)}</p>' if message else ""
        body = (
            f'{banner}<section class="card confirm"><form method="post" '
            f'action="{e(self.url("/login"))}">{self._csrf_field()}'
            f'<input type="hidden" name="next" value="{e(next_url)}">'
            '<label class="block">Token<input type="password" name="token" maxlength="512" '
            'autocomplete="current-password" autofocus></label>'
            '<div class="actions"><button type="submit" id="login">Sign in</button></div>'
            "</form></section>"
        )
        return self.layout("Sign in", body)

    def error(self, status: int, message: str) -> str:
        body = (
            f'<section class="card"><p class="error">{e(message)}</p>'
            f'<p><a href="{e(self.url("/"))}">Back to the runs</a></p></section>'
        )
        return self.layout(f"{status} {_REASONS.get(status, 'Error')}", body)


_REASONS = {
    400: "Bad request",
    401: "Sign in needed",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    413: "Too large",
    414: "Query too long",
    500: "Server error",
}


def to_json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=True, separators=(",", ":"))
