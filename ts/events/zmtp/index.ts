/** ZeroMQ (ZMTP 3.0/3.1, NULL security) in TypeScript over node:net: the sockets kvroute needs. */
export { DealerSocket } from "./dealer-socket.js";
export { parseEndpoint, type Endpoint } from "./endpoint.js";
export { ZmtpError, type ZmtpErrorReason } from "./errors.js";
export type { ReceiveOptions } from "./inbox.js";
export { PubSocket, type PubSocketStats } from "./pub-socket.js";
export { RouterSocket } from "./router-socket.js";
export type { DisconnectInfo, PeerInfo, ZmtpSocket, ZmtpSocketEvents, ZmtpSocketOptions } from "./socket.js";
export { SubSocket } from "./sub-socket.js";
