// Socket.IO's own Node.js server, one room: the reference implementation of the protocol.
//
// Usage: node server.js PORT. Events: `join(room, ack)` enters the room and acknowledges "ok";
// `pub(room, data)` emits `msg` with `data` to everyone in the room (encoded once by the adapter).
// WebSocket transport only; no per-message deflate (the Socket.IO 4 default).
"use strict";

const http = require("http");
const { Server } = require("socket.io");

const port = Number(process.argv[2]);
const httpServer = http.createServer();
const io = new Server(httpServer, {
  transports: ["websocket"],
  serveClient: false,
  perMessageDeflate: false,
});

io.on("connection", (socket) => {
  socket.on("join", (room, ack) => {
    socket.join(room);
    if (typeof ack === "function") ack("ok");
  });
  socket.on("pub", (room, data) => {
    io.to(room).emit("msg", data);
  });
});

httpServer.listen({ port, host: "127.0.0.1", backlog: 4096 });
process.on("SIGTERM", () => process.exit(0));
