;;; Drives `editloop lsp' from Emacs's lsp-mode with README's snippet; run by tests/test_editors_emacs.py.
(require 'lsp-mode)
(setq lsp-auto-guess-root t lsp-enable-file-watchers nil lsp-enable-snippet nil lsp-restart 'ignore
      ;; Debian's elpa-lsp-mode 8.0 lacks the mode this default turns on (README says so too).
      lsp-modeline-workspace-status-enable nil
      lsp-session-file (expand-file-name "lsp-session" temporary-file-directory))

;; README's snippet, verbatim.
(with-eval-after-load 'lsp-mode
  (lsp-register-client
   (make-lsp-client :new-connection (lsp-stdio-connection '("editloop" "lsp"))
                    :activation-fn (lsp-activate-on "python" "rust" "go" "java")
                    :add-on? t
                    :server-id 'editloop)))

(load (expand-file-name "drive.el" (file-name-directory load-file-name)))
(editloop-drive
 #'lsp
 (lambda ()
   (seq-some (lambda (w) (eq (lsp--workspace-status w) 'initialized)) (lsp-workspaces)))
 #'lsp-completion-at-point)
