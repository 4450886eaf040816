import { useState, type FormEvent } from "react";
import { Link } from "wouter";
import { useMutation, useQueries, useQuery, useQueryClient } from "@tanstack/react-query";
import { api, call, errorMessage } from "../api/client";
import type { components } from "../api/client";
import { useServerErrors } from "../components/form";
import { Empty, ErrorState, Loading, QueryView } from "../components/states";
import { Field, PageHeader, SecretOnce, Section, StatusBadge } from "../components/ui";
import { ago, dateTime } from "../format";

type ClientPublic = components["schemas"]["ClientPublic"];

function hardwareSummary(hw: Record<string, unknown>): string {
  const parts: string[] = [];
  const acc = hw.accelerator ?? hw.device ?? hw.gpu;
  if (acc) parts.push(String(acc));
  const mem = hw.memory_gb ?? hw.accelerator_memory_gb ?? hw.gpu_memory_gb;
  if (mem != null) parts.push(`${mem} GB`);
  const ram = hw.ram_gb ?? hw.host_memory_gb;
  if (ram != null) parts.push(`RAM ${ram} GB`);
  if (parts.length) return parts.join(" · ");
  const entries = Object.entries(hw);
  return entries.length ? entries.map(([k, v]) => `${k}: ${String(v)}`).join(", ") : "not reported";
}

type Seat = { federation: string; federationId: string; rank: number };

/** Each client's rank budget in every federation it belongs to. */
function useSeats(): Map<string, Seat[]> {
  const feds = useQuery({
    queryKey: ["federations"],
    queryFn: () => call(api.GET("/api/v1/federations", { params: { query: { limit: 500 } } })),
  });
  const list = feds.data?.data ?? [];
  const members = useQueries({
    queries: list.map((f) => ({
      queryKey: ["federation", f.id, "memberships"],
      queryFn: () =>
        call(api.GET("/api/v1/federations/{federation_id}/memberships", { params: { path: { federation_id: f.id }, query: { limit: 500 } } })),
    })),
  });
  const seats = new Map<string, Seat[]>();
  list.forEach((f, i) => {
    for (const m of members[i]?.data?.data ?? []) {
      seats.set(m.client_id, [...(seats.get(m.client_id) ?? []), { federation: f.name, federationId: f.id, rank: m.rank_budget }]);
    }
  });
  return seats;
}

function ClientRow({
  client,
  seats,
  onKey,
}: {
  client: ClientPublic;
  seats: Seat[];
  onKey: (key: string, name: string) => void;
}) {
  const qc = useQueryClient();
  const [error, setError] = useState<string | null>(null);
  const refresh = () => qc.invalidateQueries({ queryKey: ["clients", client.organization_id] });
  const revoke = useMutation({
    mutationFn: () =>
      call(api.POST("/api/v1/clients/{client_id}/revoke", { params: { path: { client_id: client.id } } })),
    onSuccess: () => void refresh(),
    onError: (e) => setError(errorMessage(e)),
  });
  const rotate = useMutation({
    mutationFn: () =>
      call(api.POST("/api/v1/clients/{client_id}/rotate-key", { params: { path: { client_id: client.id } } })),
    onSuccess: (c) => {
      onKey(c.api_key, c.name);
      void refresh();
    },
    onError: (e) => setError(errorMessage(e)),
  });
  const busy = revoke.isPending || rotate.isPending;
  return (
    <tr>
      <td>
        <strong>{client.name}</strong>
        <div className="muted mono">{client.api_key_prefix}…</div>
      </td>
      <td>{client.revoked ? <StatusBadge status="revoked" /> : <StatusBadge status="active" />}</td>
      <td>{hardwareSummary(client.hardware)}</td>
      <td>
        {seats.length ? (
          seats.map((x) => (
            <Link key={x.federationId} href={`/federations/${x.federationId}`} className="chip">
              {x.federation}: r≤{x.rank}
            </Link>
          ))
        ) : (
          <span className="muted">none</span>
        )}
      </td>
      <td title={dateTime(client.last_seen_at)}>{ago(client.last_seen_at)}</td>
      <td>
        <div className="page-actions">
          <button
            type="button"
            className="btn btn-small"
            disabled={busy || client.revoked}
            aria-label={`Rotate key of ${client.name}`}
            onClick={() => {
              if (confirm(`Rotate the API key of ${client.name}? The old key stops working at once.`)) rotate.mutate();
            }}
          >
            Rotate key
          </button>
          <button
            type="button"
            className="btn btn-small btn-danger"
            disabled={busy || client.revoked}
            aria-label={`Revoke ${client.name}`}
            onClick={() => {
              if (confirm(`Revoke ${client.name}? It can no longer take part.`)) revoke.mutate();
            }}
          >
            Revoke
          </button>
        </div>
        {error && (
          <p className="field-error" role="alert">
            {error}
          </p>
        )}
      </td>
    </tr>
  );
}

function JoinTokens({ organizationId }: { organizationId: string }) {
  const qc = useQueryClient();
  const tokens = useQuery({
    queryKey: ["join-tokens", organizationId],
    queryFn: () =>
      call(api.GET("/api/v1/join-tokens", { params: { query: { organization_id: organizationId, limit: 500 } } })),
  });
  const [note, setNote] = useState("");
  const [minutes, setMinutes] = useState("1440");
  const [secret, setSecret] = useState<string | null>(null);
  const errors = useServerErrors(["note", "expires_in_minutes"]);
  const create = useMutation({
    mutationFn: () =>
      call(
        api.POST("/api/v1/join-tokens", {
          body: { organization_id: organizationId, note, expires_in_minutes: Number(minutes) },
        }),
      ),
    onSuccess: (t) => {
      setSecret(t.token);
      setNote("");
      errors.clear();
      void qc.invalidateQueries({ queryKey: ["join-tokens", organizationId] });
    },
    onError: errors.capture,
  });
  function submit(e: FormEvent) {
    e.preventDefault();
    create.mutate();
  }
  return (
    <Section title="Join tokens">
      <p className="muted" style={{ marginTop: 0 }}>
        A client enrolls once with a join token (<code>fedlora-client enroll --token …</code>) and receives its own API
        key.
      </p>
      <form className="inline-form" onSubmit={submit} aria-label="New join token">
        <Field label="Note" error={errors.fields.note}>
          {(p) => <input {...p} value={note} placeholder="e.g. hospital GPU box" onChange={(e) => setNote(e.target.value)} />}
        </Field>
        <Field label="Expires in (minutes)" error={errors.fields.expires_in_minutes}>
          {(p) => <input {...p} type="number" min={1} value={minutes} onChange={(e) => setMinutes(e.target.value)} />}
        </Field>
        <button type="submit" className="btn btn-primary" disabled={create.isPending}>
          Create join token
        </button>
      </form>
      {errors.form && (
        <p className="banner banner-error" role="alert" style={{ marginTop: "0.8rem" }}>
          {errors.form}
        </p>
      )}
      {secret && <SecretOnce label="Join token" value={secret} onDone={() => setSecret(null)} />}
      <QueryView
        query={tokens}
        label="join tokens"
        isEmpty={(d) => d.data.length === 0}
        empty={<Empty title="No join tokens yet" />}
      >
        {(d) => (
          <div className="table-wrap" style={{ marginTop: "0.8rem" }}>
            <table aria-label="Join tokens">
              <thead>
                <tr>
                  <th scope="col">Note</th>
                  <th scope="col">Created</th>
                  <th scope="col">Expires</th>
                  <th scope="col">State</th>
                </tr>
              </thead>
              <tbody>
                {d.data.map((t) => (
                  <tr key={t.id}>
                    <td>{t.note || <span className="muted">—</span>}</td>
                    <td>{dateTime(t.created_at)}</td>
                    <td>{dateTime(t.expires_at)}</td>
                    <td>
                      {t.used_at ? (
                        <StatusBadge status="used" />
                      ) : Date.parse(t.expires_at) < Date.now() ? (
                        <StatusBadge status="expired" />
                      ) : (
                        <StatusBadge status="unused" />
                      )}
                    </td>
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
        )}
      </QueryView>
    </Section>
  );
}

export default function OrganizationPage({ id }: { id: string }) {
  const org = useQuery({
    queryKey: ["organization", id],
    queryFn: () => call(api.GET("/api/v1/organizations/{organization_id}", { params: { path: { organization_id: id } } })),
  });
  const clients = useQuery({
    queryKey: ["clients", id],
    queryFn: () => call(api.GET("/api/v1/clients", { params: { query: { organization_id: id, limit: 500 } } })),
    refetchInterval: 15_000,
  });
  const [newKey, setNewKey] = useState<{ key: string; name: string } | null>(null);
  const seats = useSeats();

  if (org.isPending) return <Loading label="Loading organization" />;
  if (org.error) return <ErrorState error={org.error} retry={() => void org.refetch()} />;

  return (
    <>
      <div className="breadcrumb">
        <Link href="/organizations">Organizations</Link> /
      </div>
      <PageHeader title={org.data.name} subtitle={org.data.description || undefined} />
      <Section title="Clients">
        {newKey && (
          <SecretOnce label={`New API key of ${newKey.name}`} value={newKey.key} onDone={() => setNewKey(null)} />
        )}
        <QueryView
          query={clients}
          label="clients"
          isEmpty={(d) => d.data.length === 0}
          empty={
            <Empty title="No clients yet">Create a join token below and enroll a machine with the fedlora-client SDK.</Empty>
          }
        >
          {(d) => (
            <div className="table-wrap">
              <table aria-label="Clients">
                <thead>
                  <tr>
                    <th scope="col">Client</th>
                    <th scope="col">Key</th>
                    <th scope="col">Hardware</th>
                    <th scope="col">Rank budgets</th>
                    <th scope="col">Last seen</th>
                    <th scope="col">Actions</th>
                  </tr>
                </thead>
                <tbody>
                  {d.data.map((c) => (
                    <ClientRow key={c.id} client={c} seats={seats.get(c.id) ?? []} onKey={(key, name) => setNewKey({ key, name })} />
                  ))}
                </tbody>
              </table>
            </div>
          )}
        </QueryView>
      </Section>
      <JoinTokens organizationId={id} />
    </>
  );
}
