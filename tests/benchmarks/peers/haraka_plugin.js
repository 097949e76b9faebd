'use strict'
// The sink plugin haraka_sink.js loads into Haraka: every sender and recipient accepted, the reverse-DNS
// hook answered with the server's own name (Haraka looks the client up otherwise), and each message
// queued by dropping it (Haraka has already read it into memory) or, with --maildir, by storing it
// durably before its 250 (sink_common.js).

const { ok, denysoft } = require('haraka-constants')
const common = require('./sink_common.js')

exports.hook_init_master = function (next, server) {
    common.announceListening(server.cfg.main.listen)
    next()
}

exports.hook_lookup_rdns = function (next) {
    next(ok, common.HOSTNAME)
}

exports.hook_rcpt = function (next) {
    next(ok)
}

exports.hook_queue = function (next, connection) {
    const maildir = process.env.HARAKA_SINK_MAILDIR
    if (!maildir) {
        common.countAccepted()
        return next(ok)
    }
    const transaction = connection.transaction
    transaction.message_stream.get_data((data) => {
        const trace = common.traceHeaders({
            helo: connection.hello.host,
            peer: connection.remote.ip,
            from: transaction.mail_from.address,
            to: transaction.rcpt_to[0].address,
            by: 'Haraka',
        })
        common.deliver(maildir, Buffer.concat([Buffer.from(trace), data])).then(
            () => {
                common.countAccepted()
                next(ok)
            },
            (error) => next(denysoft, error.message),
        )
    })
}
