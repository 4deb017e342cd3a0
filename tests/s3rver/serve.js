// s3rver (the npm package) on 127.0.0.1, on a free port, storing under the directory given as argv[2].
// Prints the port as the first line of stdout, then serves until stdin closes or the process is killed.
const S3rver = require('s3rver');

const server = new S3rver({ address: '127.0.0.1', port: 0, directory: process.argv[2], silent: true });
server.run().then((address) => {
  process.stdout.write(`${address.port}\n`);
  process.stdin.resume();
  process.stdin.on('end', () => server.close().then(() => process.exit(0)));
});
