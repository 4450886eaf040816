import { useEffect, useMemo, useRef, useState, type FormEvent } from "react";
import { Link } from "wouter";
import { useMutation, useQueries, useQuery, useQueryClient } from "@tanstack/react-query";
import { api, call, errorMessage } from "../api/client";
import type { components } from "../api/client";
import { BytesChart, EpsilonChart, LossChart, RankChart, type RoundPoint } from "../components/Charts";
import { useServerErrors } from "../components/form";
import { WorkerBanner } from "../components/WorkerBanner";
import { Empty, ErrorState, Loading, QueryView } from "../components/states";
import { Field, PageHeader, Section, StatusBadge } from "../components/ui";
import { ago, bytes, dateTime, durationBetween, num, seconds, shortId } from "../format";

type S = components["schemas"];
type Task = S["TaskPublic"];
type Update = S["UpdatePublic"];
type Adapter = S["GlobalAdapterPublic"];

const LIVE_MS = 2_000;

function metric(m: Record<string, unknown> | undefined, ...names: string[]): number | null {
  for (const n of names) {
    const v = m?.[n];
    if (typeof v === "number" && Number.isFinite(v)) return v;
  }
  return null;
}

/** "accuracy 0.81 · loss 0.42 (3 clients)": a federated evaluation in words. */
function scoreText(e: S["EvaluationPublic"]): string {
  const first = e.accuracy != null ? `accuracy ${num(e.accuracy)} · ` : e.perplexity != null ? `perplexity ${num(e.perplexity)} · ` : "";
  return `${first}loss ${num(e.loss)} (${e.num_clients} client${e.num_clients === 1 ? "" : "s"}, ${e.num_examples} examples)`;
}

function planRank(plan: Record<string, unknown>): number | null {
  const lora = plan?.lora as { rank?: number } | undefined;
  return typeof lora?.rank === "number" ? lora.rank : null;
}

const ACTIONS: Record<string, { label: string; action: "start" | "pause" | "resume" | "cancel"; danger?: boolean }[]> = {
  draft: [{ label: "Start", action: "start" }, { label: "Cancel", action: "cancel", danger: true }],
  running: [{ label: "Pause", action: "pause" }, { label: "Cancel", action: "cancel", danger: true }],
  paused: [{ label: "Resume", action: "resume" }, { label: "Cancel", action: "cancel", danger: true }],
};

function Controls({ id, status, name }: { id: string; status: string; name: string }) {
  const qc = useQueryClient();
  const [error, setError] = useState<string | null>(null);
  const act = useMutation({
    mutationFn: (action: "start" | "pause" | "resume" | "cancel") => {
      const params = { params: { path: { federation_id: id } } };
      switch (action) {
        case "start":
          return call(api.POST("/api/v1/federations/{federation_id}/start", params));
        case "pause":
          return call(api.POST("/api/v1/federations/{federation_id}/pause", params));
        case "resume":
          return call(api.POST("/api/v1/federations/{federation_id}/resume", params));
        case "cancel":
          return call(api.POST("/api/v1/federations/{federation_id}/cancel", params));
      }
    },
    onSuccess: () => {
      setError(null);
      void qc.invalidateQueries({ queryKey: ["federation", id] });
      void qc.invalidateQueries({ queryKey: ["federations"] });
    },
    onError: (e) => setError(errorMessage(e)),
  });
  return (
    <div className="stack" style={{ gap: "0.4rem", alignItems: "flex-end" }}>
      <div className="page-actions">
        {(ACTIONS[status] ?? []).map((a) => (
          <button
            key={a.action}
            type="button"
            className={`btn ${a.danger ? "btn-danger" : "btn-primary"}`}
            disabled={act.isPending}
            onClick={() => {
              if (a.action !== "cancel" || confirm(`Cancel ${name}? This cannot be undone.`)) act.mutate(a.action);
            }}
          >
            {a.label}
          </button>
        ))}
      </div>
      {error && (
        <p className="field-error" role="alert">
          {error}
        </p>
      )}
    </div>
  );
}

function AddMember({ id, taken }: { id: string; taken: Set<string> }) {
  const qc = useQueryClient();
  const clients = useQuery({
    queryKey: ["clients", "all"],
    queryFn: () => call(api.GET("/api/v1/clients", { params: { query: { limit: 500 } } })),
  });
  const [clientId, setClientId] = useState("");
  const [rank, setRank] = useState("8");
  const errors = useServerErrors(["client_id", "rank_budget"]);
  const add = useMutation({
    mutationFn: () =>
      call(
        api.POST("/api/v1/federations/{federation_id}/memberships", {
          params: { path: { federation_id: id } },
          body: { client_id: clientId, rank_budget: Number(rank) },
        }),
      ),
    onSuccess: () => {
      errors.clear();
      setClientId("");
      void qc.invalidateQueries({ queryKey: ["federation", id] });
    },
    onError: errors.capture,
  });
  const free = (clients.data?.data ?? []).filter((c) => !taken.has(c.id) && !c.revoked);
  function submit(e: FormEvent) {
    e.preventDefault();
    add.mutate();
  }
  return (
    <form className="inline-form" onSubmit={submit} aria-label="Add member" noValidate>
      <Field label="Client" error={errors.fields.client_id}>
        {(p) => (
          <select {...p} value={clientId} onChange={(e) => setClientId(e.target.value)} disabled={clients.isPending}>
            <option value="">{clients.isPending ? "Loading clients…" : free.length ? "Choose a client" : "No clients available"}</option>
            {free.map((c) => (
              <option key={c.id} value={c.id}>
                {c.name}
              </option>
            ))}
          </select>
        )}
      </Field>
      <Field label="Rank budget" error={errors.fields.rank_budget}>
        {(p) => <input {...p} inputMode="numeric" value={rank} onChange={(e) => setRank(e.target.value)} />}
      </Field>
      <button type="submit" className="btn" disabled={!clientId || add.isPending}>
        Add member
      </button>
      {(errors.form || clients.error) && (
        <p className="field-error" role="alert" style={{ flexBasis: "100%" }}>
          {errors.form ?? errorMessage(clients.error)}
        </p>
      )}
    </form>
  );
}

type Membership = S["MembershipPublic"];

function useMembershipUpdate(federationId: string, membership: Membership) {
  const qc = useQueryClient();
  return useMutation({
    mutationFn: (body: S["MembershipUpdate"]) =>
      call(
        api.PATCH("/api/v1/federations/{federation_id}/memberships/{membership_id}", {
          params: { path: { federation_id: federationId, membership_id: membership.id } },
          body,
        }),
      ),
    onSuccess: () => void qc.invalidateQueries({ queryKey: ["federation", federationId, "memberships"] }),
  });
}

/** A member's rank budget, editable in place (Enter or Save). */
function RankBudget({ federationId, membership, name }: { federationId: string; membership: Membership; name: string }) {
  const [value, setValue] = useState(String(membership.rank_budget));
  const update = useMembershipUpdate(federationId, membership);
  useEffect(() => setValue(String(membership.rank_budget)), [membership.rank_budget]);
  const changed = value !== String(membership.rank_budget);
  return (
    <form
      className="cell-form"
      onSubmit={(e) => {
        e.preventDefault();
        if (changed) update.mutate({ rank_budget: Number(value) });
      }}
    >
      <input
        aria-label={`Rank budget of ${name}`}
        inputMode="numeric"
        value={value}
        onChange={(e) => setValue(e.target.value)}
        aria-invalid={update.error ? true : undefined}
      />
      {changed && (
        <button type="submit" className="btn btn-small" disabled={update.isPending}>
          Save
        </button>
      )}
      {update.error && (
        <span className="field-error" role="alert">
          {errorMessage(update.error)}
        </span>
      )}
    </form>
  );
}

function ActiveToggle({ federationId, membership, name }: { federationId: string; membership: Membership; name: string }) {
  const update = useMembershipUpdate(federationId, membership);
  return (
    <label className="check">
      <input
        type="checkbox"
        checked={membership.active}
        disabled={update.isPending}
        onChange={(e) => update.mutate({ active: e.target.checked })}
        aria-label={`${name} takes part`}
      />
      {update.error ? <span className="field-error">{errorMessage(update.error)}</span> : membership.active ? "yes" : "no"}
    </label>
  );
}

const RELEASABLE = new Set(["pending", "leased"]);

/** Give back a task its client will not finish (gone, stuck): the round stops waiting for it. */
function ReleaseTask({ task, name, round }: { task: Task; name: string; round: number }) {
  const qc = useQueryClient();
  const [open, setOpen] = useState(false);
  const [reason, setReason] = useState("");
  const label = `Release ${name}'s task in round ${round}`;
  const release = useMutation({
    mutationFn: () =>
      call(
        api.POST("/api/v1/tasks/{task_id}/release", {
          params: { path: { task_id: task.id } },
          body: { reason: reason.trim() || "released by an admin" },
        }),
      ),
    onSuccess: () => {
      setOpen(false);
      void qc.invalidateQueries({ queryKey: ["round", task.round_id] });
      void qc.invalidateQueries({ queryKey: ["federation", task.federation_id] });
    },
  });
  if (!open)
    return (
      <button type="button" className="btn btn-small" aria-label={label} title="The round stops waiting for this task" onClick={() => setOpen(true)}>
        Release
      </button>
    );
  return (
    <form
      className="inline-form"
      aria-label={label}
      style={{ margin: "0.3rem 0" }}
      onSubmit={(e) => {
        e.preventDefault();
        release.mutate();
      }}
    >
      <Field label="Reason" help="Shown with the task; the round goes on with the others.">
        {(p) => <input {...p} value={reason} placeholder="released by an admin" onChange={(e) => setReason(e.target.value)} autoFocus />}
      </Field>
      <button type="submit" className="btn btn-danger btn-small" disabled={release.isPending}>
        Release task
      </button>
      <button type="button" className="btn btn-small" onClick={() => setOpen(false)}>
        Keep it
      </button>
      {release.error && (
        <p className="field-error" role="alert" style={{ flexBasis: "100%" }}>
          {errorMessage(release.error)}
        </p>
      )}
    </form>
  );
}

/** The worker's threshold calibration of a round's adapter, from its metrics; null without it. */
function calibrationText(metrics: Record<string, unknown> | undefined): string | null {
  const offset = metric(metrics, "calibration_offset");
  if (offset == null) return null;
  const sign = offset >= 0 ? "+" : "";
  let text = `Threshold calibration: margin offset ${sign}${offset.toFixed(3)}`;
  const before = metric(metrics, "calibration_balanced_accuracy_before");
  const after = metric(metrics, "calibration_balanced_accuracy_after");
  const rows = metric(metrics, "calibration_examples");
  if (before != null && after != null && rows != null) {
    text += ` (members' held-out balanced accuracy of the previous adapter ${before.toFixed(3)} → ${after.toFixed(3)}, ${rows} rows)`;
  }
  return text;
}

function Timeline({
  rounds,
  tasks,
  names,
  adapters,
}: {
  rounds: S["RoundPublic"][];
  tasks: Task[];
  names: Map<string, string>;
  adapters: Adapter[];
}) {
  if (!rounds.length) return <Empty title="No rounds yet">Start the federation to open round 1.</Empty>;
  const byRound = new Map<string, Task[]>();
  for (const t of tasks) byRound.set(t.round_id, [...(byRound.get(t.round_id) ?? []), t]);
  const adapterOf = new Map(adapters.map((a) => [a.round_id, a]));
  return (
    <ol className="timeline" aria-label="Rounds">
      {[...rounds]
        .sort((a, b) => b.number - a.number)
        .map((r) => {
          const ts = byRound.get(r.id) ?? [];
          const done = new Set(["uploaded", "reported"]);
          // a released task is no straggler: the line below says who released it and why
          const stragglers = r.state === "open" ? [] : ts.filter((t) => !done.has(t.status) && t.status !== "released");
          const roundTime = durationBetween(r.opened_at, r.aggregating_at ?? r.failed_at ?? (r.state === "open" ? new Date().toISOString() : null));
          const aggTime = r.job_duration_seconds ?? durationBetween(r.aggregating_at, r.completed_at);
          const evaluating = r.kind === "evaluation";
          const calibration = calibrationText(adapterOf.get(r.id)?.metrics);
          return (
            <li key={r.id} className={`t-${r.state}`}>
              <div className="t-head">
                <strong>Round {r.number}</strong>
                {evaluating && <span className="chip">final evaluation</span>}
                <StatusBadge status={r.state} />
                <span className="t-meta">
                  <span>opened {ago(r.opened_at)}</span>
                  <span>
                    {ts.filter((t) => done.has(t.status)).length}/{ts.length} {evaluating ? "scores" : "updates"}
                    {!evaluating && ` (min ${r.min_updates})`}
                  </span>
                  <span>round {seconds(roundTime)}</span>
                  {!evaluating && <span>aggregation {seconds(aggTime)}</span>}
                  {r.job_device && <span>device {r.job_device}</span>}
                  {r.job_peak_memory_bytes != null && <span>peak {bytes(r.job_peak_memory_bytes)}</span>}
                  {r.state === "open" && <span>deadline {dateTime(r.deadline_at)}</span>}
                </span>
              </div>
              {evaluating && (
                <p className="muted" style={{ margin: "0.2rem 0 0" }}>
                  Members score the final adapter on their own data; nothing is trained.
                </p>
              )}
              {r.evaluation && (
                <p className="muted" style={{ margin: "0.2rem 0 0" }}>
                  Its adapter, federated evaluation: {scoreText(r.evaluation)}
                  {r.best && <span className="badge badge-ok" style={{ marginLeft: "0.4rem" }}>best</span>}
                </p>
              )}
              {calibration && (
                <p className="muted" style={{ margin: "0.2rem 0 0" }}>
                  {calibration}
                </p>
              )}
              {r.failure_reason && <p className="field-error">{r.failure_reason}</p>}
              {ts.length > 0 && (
                <div style={{ marginTop: "0.4rem" }}>
                  {ts.map((t) => (
                    <span key={t.id}>
                      <span className="chip" title={t.release_reason ?? t.status}>
                        {names.get(t.client_id) ?? shortId(t.client_id)} · r={planRank(t.plan) ?? "?"} · {t.status}
                      </span>
                      {r.state === "open" && RELEASABLE.has(t.status) && (
                        <ReleaseTask task={t} name={names.get(t.client_id) ?? shortId(t.client_id)} round={r.number} />
                      )}
                    </span>
                  ))}
                  {stragglers.length > 0 && (
                    <span className="muted"> stragglers: {stragglers.map((t) => names.get(t.client_id) ?? shortId(t.client_id)).join(", ")}</span>
                  )}
                </div>
              )}
              {ts
                .filter((t) => t.status === "released")
                .map((t) => (
                  <p key={t.id} className="muted" style={{ margin: "0.2rem 0 0" }}>
                    {names.get(t.client_id) ?? shortId(t.client_id)}'s task released by {t.released_by ?? "?"}
                    {t.released_at ? ` ${ago(t.released_at)}` : ""}: {t.release_reason}
                  </p>
                ))}
            </li>
          );
        })}
    </ol>
  );
}

export default function FederationPage({ id }: { id: string }) {
  const path = { params: { path: { federation_id: id } } };
  const fed = useQuery({
    queryKey: ["federation", id],
    queryFn: () => call(api.GET("/api/v1/federations/{federation_id}", path)),
    refetchInterval: (q) => (q.state.data?.status === "running" ? LIVE_MS : false),
  });
  const live = fed.data?.status === "running";
  // a round still open or aggregating (the evaluation pass after the last training round
  // runs after the federation completed) keeps the page polling too
  const final = (state: string) => state === "completed" || state === "failed";
  // When the status changes (the last round published, or an admin paused), fetch everything
  // once more: polling stops with "running", and the last round must not stay "aggregating".
  const qc = useQueryClient();
  const status = fed.data?.status;
  const seen = useRef(status);
  useEffect(() => {
    if (seen.current !== undefined && status !== seen.current) void qc.invalidateQueries({ queryKey: ["federation", id] });
    seen.current = status;
  }, [status, id, qc]);
  const list = { params: { path: { federation_id: id }, query: { limit: 500 } } };
  const rounds = useQuery({
    queryKey: ["federation", id, "rounds"],
    queryFn: () => call(api.GET("/api/v1/federations/{federation_id}/rounds", list)),
    refetchInterval: (q) => (live || q.state.data?.data.some((r) => !final(r.state)) ? LIVE_MS : false),
  });
  const poll = live || rounds.data?.data.some((r) => !final(r.state)) ? LIVE_MS : false;
  const members = useQuery({
    queryKey: ["federation", id, "memberships"],
    queryFn: () => call(api.GET("/api/v1/federations/{federation_id}/memberships", list)),
    refetchInterval: poll,
  });
  // Tasks and updates are listed per round: a finished round never changes, so it is
  // fetched once; only rounds still open or aggregating are polled.
  const roundList = rounds.data?.data ?? [];
  const taskQueries = useQueries({
    queries: roundList.map((r) => ({
      queryKey: ["round", r.id, "tasks", final(r.state)],
      queryFn: () =>
        call(api.GET("/api/v1/rounds/{round_id}/tasks", { params: { path: { round_id: r.id }, query: { limit: 500 } } })),
      staleTime: final(r.state) ? Infinity : 0,
      refetchInterval: final(r.state) ? (false as const) : poll,
    })),
  });
  const updateQueries = useQueries({
    queries: roundList.map((r) => ({
      queryKey: ["round", r.id, "updates", final(r.state)],
      queryFn: () =>
        call(api.GET("/api/v1/rounds/{round_id}/updates", { params: { path: { round_id: r.id }, query: { limit: 500 } } })),
      staleTime: final(r.state) ? Infinity : 0,
      refetchInterval: final(r.state) ? (false as const) : poll,
    })),
  });
  const allTasks: Task[] = taskQueries.flatMap((q) => q.data?.data ?? []);
  const allUpdates: Update[] = updateQueries.flatMap((q) => q.data?.data ?? []);
  const updatesKey = updateQueries.map((q) => q.dataUpdatedAt).join();
  const updatesState = {
    data: rounds.data ? allUpdates : undefined,
    error: rounds.error ?? updateQueries.find((q) => q.error)?.error ?? null,
    // Pending only until something is loaded: a round that ends gets a new query key (one
    // last fetch of its final list), and treating that fetch as pending swapped the charts
    // for a loading state every time a round completed.
    isPending: rounds.isPending || (allUpdates.length === 0 && updateQueries.some((q) => q.isPending)),
    refetch: () => Promise.all([rounds.refetch(), ...updateQueries.map((q) => q.refetch())]),
  };
  const adapters = useQuery({
    queryKey: ["federation", id, "adapters"],
    queryFn: () => call(api.GET("/api/v1/federations/{federation_id}/adapters", list)),
    refetchInterval: poll,
  });
  const clients = useQuery({
    queryKey: ["clients", "all"],
    queryFn: () => call(api.GET("/api/v1/clients", { params: { query: { limit: 500 } } })),
  });

  const names = useMemo(() => new Map((clients.data?.data ?? []).map((c) => [c.id, c.name])), [clients.data]);
  const nameOf = (cid: string) => names.get(cid) ?? shortId(cid);

  const charts = useMemo(() => {
    const ups: Update[] = allUpdates;
    const ads: Adapter[] = adapters.data?.data ?? [];
    const rs = rounds.data?.data ?? [];
    const byRoundId = new Map(rs.map((r) => [r.id, r.number]));
    const loss = new Map<number, number[]>();
    for (const u of ups) {
      const n = byRoundId.get(u.round_id);
      const l = metric(u.metrics, "train_loss", "loss");
      if (n != null && l != null) loss.set(n, [...(loss.get(n) ?? []), l]);
    }
    const points = new Map<number, RoundPoint>();
    for (const [n, ls] of loss) points.set(n, { round: n, train_loss: ls.reduce((a, b) => a + b, 0) / ls.length });
    for (const a of ads) {
      const p = points.get(a.round_number) ?? { round: a.round_number };
      p.train_loss ??= metric(a.metrics, "train_loss", "loss");
      points.set(a.round_number, p);
    }
    // The federated evaluation of the adapter each round published (scored by the next
    // round's clients, the last one by the evaluation pass), and the best adapter's round.
    for (const r of rs) {
      if ((r.kind ?? "training") !== "training" || (!r.evaluation && !r.best)) continue;
      const p = points.get(r.number) ?? { round: r.number };
      p.eval_loss = r.evaluation?.loss ?? null;
      p.eval_accuracy = r.evaluation?.accuracy ?? null;
      p.eval_perplexity = r.evaluation?.perplexity ?? null;
      p.eval_clients = r.evaluation?.num_clients ?? null;
      p.best = r.best;
      points.set(r.number, p);
    }
    const bytesBy = new Map<string, number>();
    for (const u of ups) bytesBy.set(u.client_id, (bytesBy.get(u.client_id) ?? 0) + u.size);
    const ms = members.data?.data ?? [];
    const ranks = new Map<number, number>();
    for (const m of ms) ranks.set(m.rank_budget, (ranks.get(m.rank_budget) ?? 0) + 1);
    return {
      loss: [...points.values()].sort((a, b) => a.round - b.round),
      epsilon: ms.map((m) => ({ client: nameOf(m.client_id), value: m.epsilon_spent })),
      ranks: [...ranks.entries()].sort((a, b) => a[0] - b[0]).map(([r, c]) => ({ rank: String(r), members: c })),
      bytes: [...bytesBy.entries()].map(([c, b]) => ({ client: nameOf(c), value: b })),
    };
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [updatesKey, adapters.data, rounds.data, members.data, names]);

  const title = fed.data?.name;
  useEffect(() => {
    if (title) document.title = `${title} · fedlora`;
  }, [title]);

  if (fed.isPending) return <Loading label="Loading federation" />;
  if (fed.error && !fed.data) return <ErrorState error={fed.error} retry={() => void fed.refetch()} />;
  const f = fed.data!;
  const rs = rounds.data?.data ?? [];
  // A failed round is replaced by a new one, so round numbers can pass num_rounds: count
  // completed rounds against num_rounds and show failed ones on their own. The evaluation
  // pass after the last round trains nothing and is not counted.
  const training = rs.filter((r) => (r.kind ?? "training") === "training");
  const bestRound = rs.find((r) => r.best);
  const completed = training.filter((r) => r.state === "completed").length;
  const failed = training.filter((r) => r.state === "failed").length;
  const inProgress = training.find((r) => r.state === "open" || r.state === "aggregating");
  const dpOff = f.dp?.mode === "none";
  const budget = !dpOff && typeof f.dp?.epsilon_budget === "number" ? f.dp.epsilon_budget : null;

  return (
    <>
      <div className="breadcrumb">
        <Link href="/federations">Federations</Link> /
      </div>
      <PageHeader
        title={
          <>
            {f.name} <StatusBadge status={f.status} /> {live && <span className="live">live</span>}
          </>
        }
        subtitle={f.description || `${f.base_model_id} · ${f.task_type}`}
        actions={<Controls id={id} status={f.status} name={f.name} />}
      />
      {fed.error != null && (
        <p className="banner banner-warn" role="alert">
          Live updates paused: {errorMessage(fed.error)}
        </p>
      )}
      {f.status !== "completed" && f.status !== "cancelled" && <WorkerBanner />}
      <dl className="stats">
        <div className="stat">
          <dt>Completed rounds</dt>
          <dd>
            {completed} / {f.num_rounds}
          </dd>
        </div>
        <div className="stat">
          <dt>{failed ? "Failed rounds" : "Round in progress"}</dt>
          <dd>{failed ? `${failed} (retried)` : inProgress ? `round ${inProgress.number}` : "—"}</dd>
        </div>
        <div className="stat">
          <dt>Members</dt>
          <dd>{members.data?.count ?? "—"}</dd>
        </div>
        <div className="stat">
          <dt>Strategy</dt>
          <dd>{f.strategy}</dd>
        </div>
        <div className="stat">
          <dt>Global rank</dt>
          <dd>{f.global_rank}</dd>
        </div>
        <div className="stat">
          <dt>Best adapter</dt>
          <dd title={bestRound?.evaluation ? scoreText(bestRound.evaluation) : "No adapter scored yet"}>
            {bestRound ? <Link href={`/artifacts?federation=${id}`}>round {bestRound.number}</Link> : "—"}
          </dd>
        </div>
        <div className="stat">
          <dt>Epsilon budget</dt>
          <dd>{dpOff ? "DP off" : (budget ?? "—")}</dd>
        </div>
      </dl>

      <div className="grid-2">
        <Section title="Loss and evaluation">
          <QueryView query={updatesState} label="updates">
            {() => <LossChart data={charts.loss} />}
          </QueryView>
        </Section>
        <Section title="Privacy budget">
          {dpOff ? (
            <Empty title="DP off">
              This federation trains without differential privacy: updates carry no privacy guarantee and no epsilon is
              spent.
            </Empty>
          ) : (
            <QueryView query={members} label="members">
              {() => <EpsilonChart data={charts.epsilon} budget={budget} />}
            </QueryView>
          )}
        </Section>
        <Section title="Rank budgets">
          <QueryView query={members} label="members">
            {() => <RankChart data={charts.ranks} />}
          </QueryView>
        </Section>
        <Section title="Bytes uploaded">
          <QueryView query={updatesState} label="updates">
            {() => <BytesChart data={charts.bytes} />}
          </QueryView>
        </Section>
      </div>

      <Section title="Round timeline" actions={poll ? <span className="live">polling every 2 s</span> : undefined}>
        <QueryView query={rounds} label="rounds">
          {(d) => <Timeline rounds={d.data} tasks={allTasks} names={names} adapters={adapters.data?.data ?? []} />}
        </QueryView>
      </Section>

      <Section title="Members">
        {f.status !== "completed" && f.status !== "cancelled" && (
          <AddMember id={id} taken={new Set((members.data?.data ?? []).map((m) => m.client_id))} />
        )}
        <QueryView
          query={members}
          label="members"
          isEmpty={(d) => d.data.length === 0}
          empty={<Empty title="No members yet">Add clients with a rank budget; they train at most at that rank.</Empty>}
        >
          {(d) => (
            <div className="table-wrap" style={{ marginTop: "0.8rem" }}>
              <table aria-label="Members">
                <thead>
                  <tr>
                    <th scope="col">Client</th>
                    <th scope="col" className="num">
                      Rank budget
                    </th>
                    <th scope="col" className="num">
                      Epsilon spent
                    </th>
                    <th scope="col">Fingerprint</th>
                    <th scope="col" className="num">
                      Examples
                    </th>
                    <th scope="col">Active</th>
                  </tr>
                </thead>
                <tbody>
                  {d.data.map((m) => (
                    <tr key={m.id}>
                      <td>{nameOf(m.client_id)}</td>
                      <td className="num">
                        <RankBudget federationId={id} membership={m} name={nameOf(m.client_id)} />
                      </td>
                      <td className="num">
                        {dpOff ? (
                          <span className="muted">DP off</span>
                        ) : (
                          <>
                            {num(m.epsilon_spent)}
                            {budget != null && <span className="muted"> / {budget}</span>}
                          </>
                        )}
                      </td>
                      <td>
                        {m.fingerprint == null ? (
                          <span className="muted">not reported</span>
                        ) : m.fingerprint === f.model.fingerprint ? (
                          <span className="badge badge-ok">matches</span>
                        ) : (
                          <span className="badge badge-bad">mismatch</span>
                        )}
                      </td>
                      <td className="num">{m.num_examples ?? "—"}</td>
                      <td>
                        <ActiveToggle federationId={id} membership={m} name={nameOf(m.client_id)} />
                      </td>
                    </tr>
                  ))}
                </tbody>
              </table>
            </div>
          )}
        </QueryView>
      </Section>

      <Section title="Settings">
        <details>
          <summary>All settings of this federation</summary>
          <pre className="mono" style={{ overflowX: "auto" }}>
            {JSON.stringify(
              {
                base_model_id: f.base_model_id,
                task_type: f.task_type,
                target_modules: f.target_modules,
                strategy: f.strategy,
                strategy_params: f.strategy_params,
                global_rank: f.global_rank,
                num_rounds: f.num_rounds,
                clients_per_round: f.clients_per_round,
                min_clients: f.min_clients,
                round_deadline_seconds: f.round_deadline_seconds,
                training: f.training,
                dp: f.dp,
                model_fingerprint: f.model.fingerprint,
              },
              null,
              2,
            )}
          </pre>
        </details>
        <p className="muted">
          Created {dateTime(f.created_at)} · started {dateTime(f.started_at)} · finished {dateTime(f.finished_at)} ·{" "}
          <Link href={`/artifacts?federation=${id}`}>artifacts</Link>
        </p>
      </Section>
    </>
  );
}
