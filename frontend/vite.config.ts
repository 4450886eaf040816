import { defineConfig } from "vite";
import react from "@vitejs/plugin-react";

// The API serves dist/ at "/" (StaticFiles with an SPA fallback); in `npm run dev` the
// dev server forwards /api to a local `fedlora serve` (FEDLORA_API_URL overrides).
const apiTarget = process.env.FEDLORA_API_URL ?? "http://127.0.0.1:8000";

export default defineConfig({
  plugins: [react()],
  build: {
    outDir: "dist",
    emptyOutDir: true,
    sourcemap: false,
    chunkSizeWarningLimit: 600,
  },
  server: { proxy: { "/api": apiTarget } },
  preview: { proxy: { "/api": apiTarget } },
});
