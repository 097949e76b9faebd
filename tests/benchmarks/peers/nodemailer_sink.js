'use strict'
// nodemailer's smtp-server as a sink for bench_servers.py:
//
//   node nodemailer_sink.js --port P [--cert FILE --key FILE] [--maildir DIR]
//
// Any sender and recipient, no AUTH, STARTTLS only when given a certificate, messages up to 32 MiB, no
// reverse DNS lookup (disableReverseLookup). Each message is read fully and dropped, or with --maildir
// stored durably before its 250 (sink_common.js).
//
// One change to smtp-server itself, made here at run time: SMTPConnection.prototype.init waits 100 ms
// (a setTimeout "for detecting early talkers") before every greeting, and no option turns that off. The
// replacement below does what init does without the wait: set the socket's listeners, then
// connectionReady() at once (init's other step, the maxClients check, does nothing as maxClients is unset).
// The benchmark then compares the servers, not a timer.

const fs = require('node:fs')
const { SMTPServer } = require('smtp-server')
const { SMTPConnection } = require('smtp-server/lib/smtp-connection.js')
const common = require('./sink_common.js')

const GREETING_PAUSE = /setTimeout\(\(\) => this\.connectionReady\(\), 100\)/

function removeGreetingPause() {
    if (!GREETING_PAUSE.test(SMTPConnection.prototype.init.toString())) {
        throw new Error('smtp-server: SMTPConnection.prototype.init is not the one this sink patches; check it')
    }
    SMTPConnection.prototype.init = function init() {
        this._setListeners(() => this.connectionReady())
    }
}

function onData(maildir) {
    return (stream, session, callback) => {
        const chunks = []
        stream.on('data', maildir ? (chunk) => chunks.push(chunk) : () => {})
        stream.on('error', callback)
        stream.on('end', () => {
            if (stream.sizeExceeded) {
                const error = new Error('Message too big')
                error.responseCode = 552
                return callback(error)
            }
            if (!maildir) {
                common.countAccepted()
                return callback()
            }
            const trace = common.traceHeaders({
                helo: session.hostNameAppearsAs,
                peer: session.remoteAddress,
                from: session.envelope.mailFrom.address,
                to: session.envelope.rcptTo[0].address,
                by: 'smtp-server',
            })
            common.deliver(maildir, Buffer.concat([Buffer.from(trace), ...chunks])).then(() => {
                common.countAccepted()
                callback()
            }, callback)
        })
    }
}

function main() {
    const options = common.parseOptions('node nodemailer_sink.js')
    removeGreetingPause()
    const tls = options.cert ? { key: fs.readFileSync(options.key), cert: fs.readFileSync(options.cert) } : {}
    const server = new SMTPServer({
        name: common.HOSTNAME,
        size: common.MAX_MESSAGE,
        authOptional: true,
        disabledCommands: options.cert ? ['AUTH'] : ['AUTH', 'STARTTLS'],
        disableReverseLookup: true,
        logger: false,
        ...tls,
        onData: onData(options.maildir),
    })
    server.on('error', (error) => console.error(`ERROR smtp-server: ${error.message}`))
    common.reportAtTermination()
    server.listen(options.port, '127.0.0.1', () => common.announceListening(`127.0.0.1:${options.port}`))
}

main()
