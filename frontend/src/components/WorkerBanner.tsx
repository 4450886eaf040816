// Says, on the federation pages, when no aggregation worker (or no scheduler) is alive and
// since when: without one a started federation looks "running" while nothing happens.
import { useQuery } from "@tanstack/react-query";
import { api, call } from "../api/client";
import { ago } from "../format";

const POLL_MS = 5_000;

/** "10:42" today, a date and time otherwise. */
function when(iso: string): string {
  const d = new Date(iso);
  const today = new Date().toDateString() === d.toDateString();
  return today ? d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }) : d.toLocaleString();
}

function since(what: string, iso: string | null | undefined): string {
  return iso ? `No ${what} has reported since ${when(iso)} (${ago(iso)})` : `No ${what} has ever reported`;
}

export function WorkerBanner() {
  const health = useQuery({
    queryKey: ["workers"],
    queryFn: () => call(api.GET("/api/v1/workers")),
    refetchInterval: POLL_MS,
  });
  const w = health.data;
  if (!w || w.status === "ok") return null;
  if (w.status === "no_worker")
    return (
      <p className="banner banner-error" role="alert" aria-label="Worker status">
        <strong>{since("aggregation worker", w.last_worker_seen_at)}</strong> — rounds will not open or aggregate. Start one
        with <code>fedlora worker --beat</code> (on the <code>{w.queue}</code> queue).
      </p>
    );
  return (
    <p className="banner banner-warn" role="alert" aria-label="Worker status">
      <strong>{since("scheduler", w.last_scheduler_seen_at)}</strong> — round deadlines, expired leases and lost jobs are not
      handled. Run one <code>fedlora scheduler</code>, or start a worker with <code>--beat</code>.
    </p>
  );
}
