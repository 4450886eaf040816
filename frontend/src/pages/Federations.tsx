import { Link } from "wouter";
import { useQueries, useQuery } from "@tanstack/react-query";
import { api, call } from "../api/client";
import type { components } from "../api/client";
import { Empty, QueryView } from "../components/states";
import { WorkerBanner } from "../components/WorkerBanner";
import { PageHeader, Section, StatusBadge } from "../components/ui";
import { ago, dateTime } from "../format";

/** Fields the list shows when the API provides them (progress and participants). */
export type FederationRow = components["schemas"]["FederationPublic"] & {
  current_round?: number | null;
  member_count?: number | null;
};

export function FederationsPage() {
  const feds = useQuery({
    queryKey: ["federations"],
    queryFn: () => call(api.GET("/api/v1/federations", { params: { query: { limit: 500 } } })),
    refetchInterval: (q) =>
      (q.state.data?.data as FederationRow[] | undefined)?.some((f) => f.status === "running") ? 5_000 : false,
  });
  // Progress and participants per federation: the list's counts (limit 1) of its rounds and
  // memberships. Rounds are numbered from 1 without gaps, so their count is the current round.
  const rows = (feds.data?.data ?? []) as FederationRow[];
  const live = rows.some((f) => f.status === "running") ? 5_000 : false;
  const counts = useQueries({
    queries: rows.flatMap((f) => [
      {
        queryKey: ["federation", f.id, "rounds", "count"],
        queryFn: () =>
          call(api.GET("/api/v1/federations/{federation_id}/rounds", { params: { path: { federation_id: f.id }, query: { limit: 1 } } })),
        enabled: f.current_round === undefined,
        refetchInterval: f.status === "running" ? live : (false as const),
      },
      {
        queryKey: ["federation", f.id, "memberships", "count"],
        queryFn: () =>
          call(
            api.GET("/api/v1/federations/{federation_id}/memberships", { params: { path: { federation_id: f.id }, query: { limit: 1 } } }),
          ),
        enabled: f.member_count === undefined,
      },
    ]),
  });
  const progress = new Map(
    rows.map((f, i) => [
      f.id,
      { round: f.current_round ?? counts[2 * i]?.data?.count, members: f.member_count ?? counts[2 * i + 1]?.data?.count },
    ]),
  );

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
                      <td className="num">
                        {progress.get(f.id)?.round || "—"} / {f.num_rounds}
                      </td>
                      <td className="num">{progress.get(f.id)?.members ?? "—"}</td>
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
