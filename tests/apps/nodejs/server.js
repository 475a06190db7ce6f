// A Node.js app with an npm dependency (ms), started by its `start` script.
const http = require("http");
const ms = require("ms");

http
  .createServer((req, res) => {
    res.writeHead(200, { "Content-Type": "text/plain" });
    res.end(`node: 90 seconds is ${ms(90000)}, NODE_ENV ${process.env.NODE_ENV}\n`);
  })
  .listen(Number(process.env.PORT));
