'use strict'
// Haraka as a sink for bench_servers.py, in this one process (nodes=0):
//
//   node haraka_sink.js --port P [--cert FILE --key FILE] [--maildir DIR]
//
// Haraka reads its settings only from a folder, so this writes one per start (removed at exit):
// listen on 127.0.0.1:P, one process, messages up to 32 MiB, log level warn (its default, info,
// writes several lines per session), and two plugins: tls (only with a certificate, which it gets with
// the DH parameters install.sh made, as Haraka would otherwise run `openssl dhparam 2048` at every start)
// and haraka_plugin.js. Then it starts Haraka as its own bin does, by loading haraka.js.

const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')
const common = require('./sink_common.js')

const DHPARAMS = path.join(__dirname, 'dhparams.pem')
const DEFAULT_CONNECTION_INI = require.resolve('Haraka/config/connection.ini')

/** Haraka's own connection.ini (a file replaces its defaults, not merges with them) with the size limit raised. */
function connectionIni() {
    const defaults = fs.readFileSync(DEFAULT_CONNECTION_INI, 'utf8')
    if (!/^bytes=\d+$/m.test(defaults)) throw new Error(`no bytes= in ${DEFAULT_CONNECTION_INI}`)
    return defaults.replace(/^bytes=\d+$/m, `bytes=${common.MAX_MESSAGE}`)
}

function writeConfig(root, options) {
    const config = path.join(root, 'config')
    fs.mkdirSync(config)
    fs.mkdirSync(path.join(root, 'plugins'))
    const files = {
        me: common.HOSTNAME,
        'smtp.ini': `[main]\nlisten=127.0.0.1:${options.port}\nnodes=0\n`,
        'connection.ini': connectionIni(),
        'log.ini': '[main]\nlevel=warn\nformat=default\n',
        plugins: options.cert ? 'tls\nbench_sink\n' : 'bench_sink\n',
    }
    if (!options.cert) files['tls.ini'] = '[main]\nkey=\ncert=\n' // else Haraka's core looks for one, logging errors
    for (const [name, text] of Object.entries(files)) fs.writeFileSync(path.join(config, name), text)
    if (options.cert) {
        fs.copyFileSync(options.cert, path.join(config, 'tls_cert.pem'))
        fs.copyFileSync(options.key, path.join(config, 'tls_key.pem'))
        fs.copyFileSync(DHPARAMS, path.join(config, 'dhparams.pem'))
    }
    // A plugin file in plugins/ that takes its hooks from haraka_plugin.js, as Haraka does for packaged plugins.
    const plugin = JSON.stringify(path.join(__dirname, 'haraka_plugin.js'))
    fs.writeFileSync(
        path.join(root, 'plugins', 'bench_sink.js'),
        `const _p = require(${plugin}); for (const k in _p) { exports[k] = _p[k] }\n`,
    )
}

function main() {
    const options = common.parseOptions('node haraka_sink.js')
    if (options.cert && !fs.existsSync(DHPARAMS)) {
        console.error(`no ${DHPARAMS}: run install.sh`)
        process.exit(2)
    }
    const root = fs.mkdtempSync(path.join(os.tmpdir(), 'haraka-sink-'))
    writeConfig(root, options)
    process.env.HARAKA = root
    if (options.maildir) process.env.HARAKA_SINK_MAILDIR = options.maildir
    process.on('exit', () => fs.rmSync(root, { recursive: true, force: true })) // at SIGTERM or if Haraka gives up
    common.reportAtTermination()
    // Haraka's logger writes to stdout; its log belongs on stderr, where the other servers' logs are.
    process.stdout.write = process.stderr.write.bind(process.stderr)
    require('Haraka/haraka.js')
}

main()
