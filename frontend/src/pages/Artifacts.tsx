import { useState } from "react";
import { useLocation, useSearch } from "wouter";
import { useQuery } from "@tanstack/react-query";
import { api, call, errorMessage, saveBlob } from "../api/client";
import type { components } from "../api/client";
import { Empty, QueryView } from "../components/states";
import { Field, PageHeader, Section } from "../components/ui";
import { dateTime, num, shortId } from "../format";

type Adapter = components["schemas"]["GlobalAdapterPublic"];

function Download({ adapter, federation }: { adapter: Adapter; federation: string }) {
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<string | null>(null);
  async function download() {
    setBusy(true);
    setError(null);
    try {
      const res = await api.GET("/api/v1/adapters/{adapter_id}/download", {
        params: { path: { adapter_id: adapter.id } },
        parseAs: "blob",
      });
      const blob = await call(Promise.resolve(res));
      saveBlob(blob as Blob, res.response, `${federation}-round-${adapter.round_number}-adapter.zip`);
    } catch (e) {
      setError(errorMessage(e));
    } finally {
      setBusy(false);
    }
  }
  return (
    <>
      <button
        type="button"
        className="btn btn-small"
        onClick={download}
        disabled={busy}
        aria-label={`Download round ${adapter.round_number} adapter`}
      >
        {busy ? "Preparing…" : "Download PEFT folder"}
      </button>
      {error && (
        <p className="field-error" role="alert">
          {error}
        </p>
      )}
    </>
  );
}

/** The federated evaluation of an adapter, in words ("—" until a later round scored it). */
function evaluationText(e: Adapter["evaluation"]): string {
  if (!e) return "—";
  const head = e.accuracy != null ? `accuracy ${num(e.accuracy)} · ` : e.perplexity != null ? `perplexity ${num(e.perplexity)} · ` : "";
  return `${head}loss ${num(e.loss)} · ${e.num_clients} client${e.num_clients === 1 ? "" : "s"}`;
}

function metricsText(m: Record<string, unknown>): string {
  const entries = Object.entries(m).filter(([, v]) => typeof v === "number");
  return entries.length ? entries.map(([k, v]) => `${k} ${num(v as number)}`).join(" · ") : "—";
}

export default function ArtifactsPage() {
  const search = useSearch();
  const [, navigate] = useLocation();
  const selected = new URLSearchParams(search).get("federation") ?? "";
  const feds = useQuery({
    queryKey: ["federations"],
    queryFn: () => call(api.GET("/api/v1/federations", { params: { query: { limit: 500 } } })),
  });
  const fedId = selected || feds.data?.data[0]?.id || "";
  const fedName = feds.data?.data.find((f) => f.id === fedId)?.name ?? "federation";
  const completed = feds.data?.data.find((f) => f.id === fedId)?.status === "completed";
  const adapters = useQuery({
    queryKey: ["federation", fedId, "adapters"],
    queryFn: () =>
      call(
        api.GET("/api/v1/federations/{federation_id}/adapters", {
          params: { path: { federation_id: fedId }, query: { limit: 500 } },
        }),
      ),
    enabled: fedId !== "",
  });

  return (
    <>
      <PageHeader
        title="Artifacts"
        subtitle="Global adapters per round, with lineage and federated evaluation; the best and the final one are marked. Each downloads as a PEFT folder."
      />
      <QueryView
        query={feds}
        label="federations"
        isEmpty={(d) => d.data.length === 0}
        empty={<Empty title="No federations yet">Adapters appear here once a federation completes a round.</Empty>}
      >
        {(d) => (
          <Section title="Global adapters">
            <div className="inline-form" style={{ marginBottom: "0.8rem" }}>
              <Field label="Federation">
                {(p) => (
                  <select {...p} value={fedId} onChange={(e) => navigate(`/artifacts?federation=${e.target.value}`)}>
                    {d.data.map((f) => (
                      <option key={f.id} value={f.id}>
                        {f.name}
                      </option>
                    ))}
                  </select>
                )}
              </Field>
            </div>
            <QueryView
              query={adapters}
              label="adapters"
              isEmpty={(a) => a.data.length === 0}
              empty={<Empty title="No global adapters yet">Each completed round publishes one.</Empty>}
            >
              {(a) => (
                <div className="table-wrap">
                  <table aria-label="Global adapters">
                    <thead>
                      <tr>
                        <th scope="col" className="num">
                          Round
                        </th>
                        <th scope="col">Federated evaluation</th>
                        <th scope="col">Strategy</th>
                        <th scope="col" className="num">
                          Updates
                        </th>
                        <th scope="col" className="num">
                          Epsilon
                        </th>
                        <th scope="col">Metrics</th>
                        <th scope="col">Adapter sha256</th>
                        <th scope="col">Published</th>
                        <th scope="col">Download</th>
                      </tr>
                    </thead>
                    <tbody>
                      {[...a.data]
                        .sort((x, y) => y.round_number - x.round_number)
                        .map((ad) => (
                          <tr key={ad.id}>
                            <td className="num">
                              {ad.round_number}
                              {ad.is_best && (
                                <span className="badge badge-ok" style={{ marginLeft: "0.4rem" }} title="Best by federated evaluation">
                                  best
                                </span>
                              )}
                              {ad.is_latest && (
                                <span className="badge badge-info" style={{ marginLeft: "0.4rem" }}>
                                  {completed ? "final" : "latest"}
                                </span>
                              )}
                            </td>
                            <td>{evaluationText(ad.evaluation)}</td>
                            <td>
                              <span className="chip">{ad.strategy}</span>
                            </td>
                            <td className="num" title={ad.update_ids.join("\n")}>
                              {ad.update_ids.length}
                            </td>
                            <td className="num">{num(ad.epsilon)}</td>
                            <td>{metricsText(ad.metrics)}</td>
                            <td className="mono" title={ad.adapter_sha256}>
                              {shortId(ad.adapter_sha256)}
                            </td>
                            <td>{dateTime(ad.created_at)}</td>
                            <td>
                              <Download adapter={ad} federation={fedName} />
                            </td>
                          </tr>
                        ))}
                    </tbody>
                  </table>
                </div>
              )}
            </QueryView>
          </Section>
        )}
      </QueryView>
    </>
  );
}
