import { Link } from "wouter";
import { useQueries, useQuery } from "@tanstack/react-query";
import { api, call } from "../api/client";
import type { components } from "../api/client";
import { Empty, QueryView } from "../components/states";
import { WorkerBanner } from "../components/WorkerBanner";
import { PageHeader, Section, StatusBadge } from "../components/ui";
import { ago, dateTime } from "../format";

/** Fields the list shows when the API provides them (participants). */
export type FederationRow = components["schemas"]["FederationPublic"] & {
  member_count?: number | null;
};

export function FederationsPage() {
  const feds = useQuery({
    queryKey: ["federations"],
    queryFn: () => call(api.GET("/api/v1/federations", { params: { query: { limit: 500 } } })),
    refetchInterval: (q) =>
      (q.state.data?.data as FederationRow[] | undefined)?.some((f) => f.status === "running") ? 5_000 : false,
  });
  // Progress comes with each federation (completed and failed training rounds: a failed round
  // is retried, so round numbers are no measure of it); participants are its memberships'
  // count (a list of limit 1).
  const rows = (feds.data?.data ?? []) as FederationRow[];
  const counts = useQueries({
    queries: rows.map((f) => ({
      queryKey: ["federation", f.id, "memberships", "count"],
      queryFn: () =>
        call(api.GET("/api/v1/federations/{federation_id}/memberships", { params: { path: { federation_id: f.id }, query: { limit: 1 } } })),
      enabled: f.member_count === undefined,
    })),
  });
  const members = new Map(rows.map((f, i) => [f.id, f.member_count ?? counts[i]?.data?.count]));

  return (
    <>
      <PageHeader
        title="Federations"
        subtitle="Training runs across organizations."
        actions={
          <Link href="/federations/new" className="btn btn-primary">
            New federation
          </Link>
        }
      />
      <WorkerBanner />
      <Section title="All federations">
        <QueryView
          query={feds}
          label="federations"
          isEmpty={(d) => d.data.length === 0}
          empty={
            <Empty title="No federations yet">
              <Link href="/federations/new">Create the first federation</Link> after adding organizations and clients.
            </Empty>
          }
        >
          {(d) => (
            <div className="table-wrap">
              <table aria-label="Federations">
                <thead>
                  <tr>
                    <th scope="col">Name</th>
                    <th scope="col">Status</th>
                    <th scope="col">Strategy</th>
                    <th scope="col" className="num">
                      Round
                    </th>
                    <th scope="col" className="num">
                      Participants
                    </th>
                    <th scope="col">Base model</th>
                    <th scope="col">Last update</th>
                  </tr>
                </thead>
                <tbody>
                  {(d.data as FederationRow[]).map((f) => (
                    <tr key={f.id}>
                      <td>
                        <Link href={`/federations/${f.id}`}>{f.name}</Link>
                      </td>
                      <td>
                        <StatusBadge status={f.status} />
                      </td>
                      <td>
                        <span className="chip">{f.strategy}</span>
                      </td>
                      <td className="num" title="Completed rounds of the planned number (failed ones are retried and not counted)">
                        {f.rounds_completed} / {f.num_rounds}
                        {f.rounds_failed > 0 && <span className="muted"> · {f.rounds_failed} failed</span>}
                      </td>
                      <td className="num">{members.get(f.id) ?? "—"}</td>
                      <td className="mono">{f.base_model_id}</td>
                      <td title={dateTime(f.updated_at)}>{ago(f.updated_at)}</td>
                    </tr>
                  ))}
                </tbody>
              </table>
            </div>
          )}
        </QueryView>
      </Section>
    </>
  );
}
