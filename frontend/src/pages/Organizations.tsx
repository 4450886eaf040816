import { useState, type FormEvent } from "react";
import { Link } from "wouter";
import { useMutation, useQuery, useQueryClient } from "@tanstack/react-query";
import { api, call } from "../api/client";
import { useServerErrors } from "../components/form";
import { Empty, QueryView } from "../components/states";
import { Field, PageHeader, Section } from "../components/ui";
import { dateTime } from "../format";

export default function OrganizationsPage() {
  const qc = useQueryClient();
  const orgs = useQuery({
    queryKey: ["organizations"],
    queryFn: () => call(api.GET("/api/v1/organizations", { params: { query: { limit: 500 } } })),
  });
  const [name, setName] = useState("");
  const [description, setDescription] = useState("");
  const errors = useServerErrors(["name", "description"]);
  const create = useMutation({
    mutationFn: () => call(api.POST("/api/v1/organizations", { body: { name, description } })),
    onSuccess: () => {
      setName("");
      setDescription("");
      errors.clear();
      void qc.invalidateQueries({ queryKey: ["organizations"] });
    },
    onError: errors.capture,
  });

  function submit(e: FormEvent) {
    e.preventDefault();
    create.mutate();
  }

  return (
    <>
      <PageHeader title="Organizations" subtitle="Participants and their client machines." />
      <Section title="New organization">
        <form className="inline-form" onSubmit={submit} aria-label="New organization">
          <Field label="Organization name" error={errors.fields.name}>
            {(p) => <input {...p} value={name} onChange={(e) => setName(e.target.value)} maxLength={128} />}
          </Field>
          <Field label="Description" error={errors.fields.description}>
            {(p) => <input {...p} value={description} onChange={(e) => setDescription(e.target.value)} />}
          </Field>
          <button type="submit" className="btn btn-primary" disabled={create.isPending}>
            {create.isPending ? "Creating…" : "Create organization"}
          </button>
        </form>
        {errors.form && (
          <p className="banner banner-error" role="alert" style={{ marginTop: "0.8rem" }}>
            {errors.form}
          </p>
        )}
      </Section>
      <Section title="All organizations">
        <QueryView
          query={orgs}
          label="organizations"
          isEmpty={(d) => d.data.length === 0}
          empty={<Empty title="No organizations yet">Create one above, then add clients with a join token.</Empty>}
        >
          {(d) => (
            <div className="table-wrap">
              <table aria-label="Organizations">
                <thead>
                  <tr>
                    <th scope="col">Name</th>
                    <th scope="col">Description</th>
                    <th scope="col">Created</th>
                  </tr>
                </thead>
                <tbody>
                  {d.data.map((o) => (
                    <tr key={o.id}>
                      <td>
                        <Link href={`/organizations/${o.id}`}>{o.name}</Link>
                      </td>
                      <td>{o.description || <span className="muted">—</span>}</td>
                      <td>{dateTime(o.created_at)}</td>
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
