%% Bulk-writes mnesia records (passwd, roster) into a running ejabberd node over Erlang
%% distribution: escript ejabberd_load.escript NODE COOKIE FILE.terms
%% FILE holds one list of records in external term format (gen_users.py ejabberd).
main([Node0, Cookie, File]) ->
    Me = list_to_atom("prov" ++ os:getpid() ++ "@localhost"),
    {ok, _} = net_kernel:start([Me, shortnames]),
    erlang:set_cookie(node(), list_to_atom(Cookie)),
    Node = list_to_atom(Node0),
    pong = net_adm:ping(Node),
    {ok, Bin} = file:read_file(File),
    Terms = binary_to_term(Bin),
    load(Node, Terms, 0),
    io:format("loaded ~p records~n", [length(Terms)]);
main(_) ->
    io:format("usage: ejabberd_load.escript NODE COOKIE FILE~n"),
    halt(2).

load(_Node, [], _) -> ok;
load(Node, Terms, N) ->
    %% One transaction per batch: one commit record in mnesia's log per batch instead of
    %% one log write (and a log dump every 1,000) per record.
    {Batch, Rest} = lists:split(min(5000, length(Terms)), Terms),
    {atomic, ok} = rpc:call(Node, mnesia, transaction,
                            [fun lists:foreach/2, [fun mnesia:write/1, Batch]], 120000),
    load(Node, Rest, N + length(Batch)).
