import { defineConfig, type ProxyOptions } from "vite";
import react from "@vitejs/plugin-react";

// The API serves dist/ at "/" (StaticFiles with an SPA fallback); `npm run dev` and
// `npm run preview` forward /api to a local API instead (FEDLORA_API_URL overrides).
const apiTarget = process.env.FEDLORA_API_URL ?? "http://127.0.0.1:8000";

const proxy: Record<string, ProxyOptions> = {
  "/api": {
    target: apiTarget,
    // A stopped API answers 502 (the dashboard says "Cannot reach the fedlora API").
    configure: (p) =>
      p.on("error", (_err, _req, res) => {
        if ("writeHead" in res && !res.headersSent) {
          res.writeHead(502, { "Content-Type": "text/plain" });
          res.end("API unreachable");
        }
      }),
  },
};

export default defineConfig({
  plugins: [react()],
  build: { outDir: "dist", emptyOutDir: true, sourcemap: false, chunkSizeWarningLimit: 600 },
  server: { proxy },
  preview: { proxy },
});
