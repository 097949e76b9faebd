// A go-smtp (0.12, as Debian ships it) sink for tests/benchmarks/bench_servers.py.
//
//	gosmtp_sink -port P [-cert FILE -key FILE] [-maildir DIR]
//
// It accepts any sender and recipient without AUTH, offers STARTTLS when given a
// certificate, and either reads each message fully and drops it or, with -maildir,
// stores it as smtpwire's Maildir does before its 250: trace headers and the message
// written to tmp/ under a unique name, the file fsynced, renamed into new/, new/
// fsynced (a message at a time, no group commit). It says "bench server listening
// on 127.0.0.1:P" on stderr once listening, and "bench-server: messages=N" at SIGTERM.
package main

import (
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/emersion/go-smtp"
)

const hostname = "localhost"

var (
	accepted  int64 // messages answered 250
	delivered int64 // Maildir file names: the Q part
)

type backend struct{ maildir string }

func (b *backend) Login(state *smtp.ConnectionState, username, password string) (smtp.Session, error) {
	return nil, smtp.ErrAuthUnsupported
}

func (b *backend) AnonymousLogin(state *smtp.ConnectionState) (smtp.Session, error) {
	return &session{maildir: b.maildir, helo: state.Hostname, peer: state.RemoteAddr}, nil
}

type session struct {
	maildir string
	helo    string
	peer    net.Addr
	from    string
	to      string
}

func (s *session) Reset()        { s.from, s.to = "", "" }
func (s *session) Logout() error { return nil }

func (s *session) Mail(from string, opts smtp.MailOptions) error {
	s.from = from
	return nil
}

func (s *session) Rcpt(to string) error {
	s.to = to
	return nil
}

func (s *session) Data(r io.Reader) error {
	if s.maildir == "" {
		if _, err := io.Copy(io.Discard, r); err != nil {
			return err
		}
	} else if err := s.store(r); err != nil {
		return err
	}
	atomic.AddInt64(&accepted, 1)
	return nil
}

// store writes the message durably into new/ before Data returns (and the 250 goes out).
func (s *session) store(r io.Reader) error {
	body, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	peer := s.peer.String()
	if host, _, err := net.SplitHostPort(peer); err == nil {
		peer = host
	}
	trace := fmt.Sprintf(
		"Return-Path: <%s>\r\nReceived: from %s ([%s])\r\n\tby %s (go-smtp) with ESMTP id %s\r\n\tfor <%s>; %s\r\n",
		s.from, s.helo, peer, hostname, token(6), s.to, time.Now().Format(time.RFC1123Z))
	now := time.Now()
	name := fmt.Sprintf("%d.%06d.P%dQ%dR%s.%s", now.Unix(), now.Nanosecond()/1000, os.Getpid(),
		atomic.AddInt64(&delivered, 1), token(8), hostname)
	tmp, final := filepath.Join(s.maildir, "tmp", name), filepath.Join(s.maildir, "new", name)
	file, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	_, err = file.Write(append([]byte(trace), body...))
	if err == nil {
		err = file.Sync()
	}
	if closeErr := file.Close(); err == nil {
		err = closeErr
	}
	if err == nil {
		err = os.Rename(tmp, final)
	}
	if err != nil {
		return err
	}
	return syncDirectory(filepath.Dir(final))
}

func syncDirectory(path string) error {
	directory, err := os.Open(path)
	if err != nil {
		return err
	}
	defer directory.Close()
	return directory.Sync()
}

func token(size int) string {
	raw := make([]byte, size)
	if _, err := rand.Read(raw); err != nil {
		panic(err)
	}
	return hex.EncodeToString(raw)
}

func main() {
	port := flag.Int("port", 0, "port on 127.0.0.1")
	cert := flag.String("cert", "", "certificate (PEM): offer STARTTLS")
	key := flag.String("key", "", "its private key (PEM)")
	maildir := flag.String("maildir", "", "store each message durably in this Maildir")
	flag.Parse()
	if *port == 0 || (*cert == "") != (*key == "") {
		log.Fatal("usage: gosmtp_sink -port P [-cert FILE -key FILE] [-maildir DIR]")
	}
	if *maildir != "" {
		for _, sub := range []string{"tmp", "new", "cur"} {
			if err := os.MkdirAll(filepath.Join(*maildir, sub), 0o700); err != nil {
				log.Fatal(err)
			}
		}
	}
	server := smtp.NewServer(&backend{maildir: *maildir})
	server.Addr = fmt.Sprintf("127.0.0.1:%d", *port)
	server.Domain = hostname
	server.MaxMessageBytes = 32 << 20 // smtpwire serve's default, as the other servers get
	server.MaxRecipients = 100
	server.AuthDisabled = true
	server.ErrorLog = log.New(os.Stderr, "ERROR go-smtp: ", log.LstdFlags) // it logs errors only
	server.ReadTimeout = 60 * time.Second
	server.WriteTimeout = 60 * time.Second
	if *cert != "" {
		pair, err := tls.LoadX509KeyPair(*cert, *key)
		if err != nil {
			log.Fatal(err)
		}
		server.TLSConfig = &tls.Config{Certificates: []tls.Certificate{pair}}
	}
	listener, err := net.Listen("tcp", server.Addr)
	if err != nil {
		log.Fatal(err)
	}
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		<-stop
		server.Close()
	}()
	fmt.Fprintf(os.Stderr, "bench server listening on %s\n", server.Addr)
	if err := server.Serve(listener); err != nil && !errors.Is(err, net.ErrClosed) {
		log.Fatal(err)
	}
	fmt.Fprintf(os.Stderr, "bench-server: messages=%d\n", atomic.LoadInt64(&accepted))
}
