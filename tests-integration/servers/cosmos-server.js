// Runs @vercel/cosmosdb-server 1.0.1 (Cosmos DB SQL API emulator, in memory) for the tests:
//  * HTTPS with a certificate generated at test start (the bundled one expired in 2021 and has no
//    subjectAltName), or plain HTTP with --no-ssl;
//  * keep-alive on (the stock CLI closes every connection);
//  * reading a missing document in a partitioned container crashes the stock handler
//    ("Cannot read properties of undefined" -> HTTP 500); answer 404 NotFound like Cosmos DB does.
//  * a transactional batch from the Python SDK names its partition key once, in a header, while the stock
//    handler reads it from each operation (answering 500): fill it in from the header. (The emulator then
//    applies a batch's operations one by one, not all-or-nothing as Cosmos DB does.)
//    Set COSMOS_NO_FIX=1 to get the stock behaviour.
// usage: NODE_PATH=<.servers/node_modules> node cosmos-server.js <port> <cert.pem> <key.pem> [--no-ssl]
"use strict";
const fs = require("fs");

if (!process.env.COSMOS_NO_FIX) {
  // Patch before the package's route table captures the handler.
  const readDocument = require("@vercel/cosmosdb-server/lib/handler/read-document");
  const original = readDocument.default;
  readDocument.default = (account, req, res, params) => {
    try {
      return original(account, req, res, params);
    } catch (e) {
      if (e instanceof TypeError) {
        res.statusCode = 404;
        return { code: "NotFound", message: "Entity with the specified id does not exist in the system.," };
      }
      throw e;
    }
  };
  const json = require("@vercel/cosmosdb-server/lib/json");
  const readJson = json.default;
  json.default = async (req) => {
    const body = await readJson(req);
    const pk = req.headers["x-ms-documentdb-partitionkey"];
    const batch = String(req.headers["x-ms-cosmos-is-batch-request"]).toLowerCase() === "true";
    if (batch && Array.isArray(body) && pk !== undefined) {
      for (const op of body) {
        if (op && op.partitionKey === undefined) op.partitionKey = pk;
      }
    }
    return body;
  };
}

const { createHttpsServer, createHttpServer } = require("@vercel/cosmosdb-server");

const [port, certPath, keyPath, flag] = process.argv.slice(2);
const plain = flag === "--no-ssl";
const server = plain
  ? createHttpServer({ keepAlive: true })
  : createHttpsServer({ cert: fs.readFileSync(certPath), key: fs.readFileSync(keyPath), keepAlive: true });
server.listen(parseInt(port, 10), "127.0.0.1", () => {
  const a = server.address();
  console.log(`Ready to accept ${plain ? "HTTP" : "HTTPS"} connections at ${a.address}:${a.port}`);
});
for (const sig of ["SIGTERM", "SIGINT"]) {
  process.on(sig, () => process.exit(0));
}
