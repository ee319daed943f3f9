// wagate under pm2. From the repository directory, after `make install`:
//   cp deploy/wagate.env.example .env   (then edit it; wagate reads .env from this directory)
//   pm2 start deploy/ecosystem.config.js && pm2 save
// See README "Run it with pm2".
const fs = require("fs");
const path = require("path");

const root = path.resolve(__dirname, "..");
const logs = path.join(root, "var", "log");
fs.mkdirSync(logs, { recursive: true });

module.exports = {
  apps: [
    {
      name: "wagate",
      cwd: root,
      script: path.join(root, "run.py"),
      args: "serve",
      interpreter: path.join(root, ".venv", "bin", "python"),
      exec_mode: "fork",
      instances: 1, // one `serve` per data directory; a second one would exit at once
      env: { PYTHONUNBUFFERED: "1" },
      // pm2 sends SIGINT, then SIGKILL after kill_timeout. wagate stops its workers, the outbox
      // and the embedded PostgreSQL itself (well under 45 s), so the signal goes to wagate only
      // (treekill off): a signal to every child at once would race that orderly stop.
      kill_timeout: 45000,
      treekill: false,
      autorestart: true,
      min_uptime: "30s",
      max_restarts: 10,
      exp_backoff_restart_delay: 1000,
      out_file: path.join(logs, "wagate.out.log"),
      error_file: path.join(logs, "wagate.err.log"),
      merge_logs: true,
      time: true,
    },
  ],
};
