import { defineConfig } from "vitest/config";

// The build lands inside the Python package so that `pip install .` ships it.
export default defineConfig({
  build: {
    outDir: "../src/cli_server/webui_dist",
    emptyOutDir: true,
    assetsDir: "assets",
  },
  server: { proxy: { "/api": "http://localhost:8080" } },
  test: {
    environment: "jsdom",
    globals: true,
    // styles.test.ts reads the stylesheet's colours ("?raw"), which needs it processed.
    css: { include: [/styles\.css/] },
  },
});
