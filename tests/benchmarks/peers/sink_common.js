'use strict'
// What the Node sinks (nodemailer_sink.js, haraka_sink.js) share: their options, the count of messages
// accepted that bench_servers.py reads, and the Maildir delivery smtpwire's Maildir does before its 250.

const crypto = require('node:crypto')
const fs = require('node:fs')
const path = require('node:path')
const { parseArgs } = require('node:util')

const HOSTNAME = 'localhost' // the servers' name, as bench_servers.py gives every server
const MAX_MESSAGE = 32 * 1024 * 1024 // smtpwire serve's default, as every server in the benchmark gets

let accepted = 0 // messages answered 250
let delivered = 0 // the Q part of Maildir file names

/** `--port P [--cert FILE --key FILE] [--maildir DIR]`, checked; exits with a usage line otherwise. */
function parseOptions(usage) {
    const { values } = parseArgs({
        options: {
            port: { type: 'string' },
            cert: { type: 'string' },
            key: { type: 'string' },
            maildir: { type: 'string' },
        },
    })
    const port = Number(values.port)
    if (!Number.isInteger(port) || port <= 0 || !values.cert !== !values.key) {
        console.error(`usage: ${usage} --port P [--cert FILE --key FILE] [--maildir DIR]`)
        process.exit(2)
    }
    if (values.maildir) {
        for (const sub of ['tmp', 'new', 'cur']) fs.mkdirSync(path.join(values.maildir, sub), { recursive: true })
    }
    return { port, cert: values.cert, key: values.key, maildir: values.maildir }
}

function announceListening(address) {
    console.error(`bench server listening on ${address}`)
}

function countAccepted() {
    accepted += 1
}

/** At SIGTERM: the line bench_servers.py reads (stderr is a file there, so console.error is synchronous). */
function reportAtTermination() {
    process.on('SIGTERM', () => {
        console.error(`bench-server: messages=${accepted}`)
        process.exit(0)
    })
}

/** Return-Path and Received, as smtpwire's Maildir writes them (the same work for every server). */
function traceHeaders({ helo, peer, from, to, by }) {
    const id = crypto.randomBytes(6).toString('hex')
    return (
        `Return-Path: <${from}>\r\nReceived: from ${helo} ([${peer}])\r\n` +
        `\tby ${HOSTNAME} (${by}) with ESMTP id ${id}\r\n\tfor <${to}>; ${new Date().toUTCString()}\r\n`
    )
}

/** Write to tmp/ under a unique name, fsync the file, rename into new/, fsync new/; resolves when durable. */
async function deliver(maildir, data) {
    delivered += 1
    const now = Date.now()
    const seconds = `${Math.floor(now / 1000)}.${String((now % 1000) * 1000).padStart(6, '0')}`
    const name = `${seconds}.P${process.pid}Q${delivered}R${crypto.randomBytes(8).toString('hex')}.${HOSTNAME}`
    const tmp = path.join(maildir, 'tmp', name)
    const final = path.join(maildir, 'new', name)
    const file = await fs.promises.open(tmp, 'wx')
    try {
        await file.writeFile(data)
        await file.sync()
    } finally {
        await file.close()
    }
    await fs.promises.rename(tmp, final)
    const folder = await fs.promises.open(path.dirname(final), 'r')
    try {
        await folder.sync()
    } finally {
        await folder.close()
    }
}

module.exports = {
    HOSTNAME,
    MAX_MESSAGE,
    announceListening,
    countAccepted,
    deliver,
    parseOptions,
    reportAtTermination,
    traceHeaders,
}
